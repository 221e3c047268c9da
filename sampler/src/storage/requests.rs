//! The trace buffer's layout in the `buffer` column family: one value per received
//! request, with the trace → items index in memory.
//!
//! Buffered data mostly dies young: ~98 % of traces are dropped seconds after they
//! arrive. Writing each trace group of a request under its own key and deleting each
//! dropped trace with a range tombstone made RocksDB's skiplist inserts, key comparisons
//! and tombstone fragmentation a quarter of a sampler's CPU. Here a request costs one
//! put, and a decision costs no RocksDB operation of its own:
//!
//! - keys `seq ++ 0x02 ++ chunk` (8-byte sequence and 2-byte chunk number, big endian):
//!   the request's items, each framed as `kind (1) ++ trace id (16) ++ length (u32 LE) ++
//!   payload`, cut into chunks of about [`CHUNK_BYTES`] at item boundaries; span items
//!   name their resources, framed once in each chunk that needs them ([`shared`]). A kept trace
//!   is read back with the chunks holding its items, not the whole request: ~2 % of traces
//!   are kept, so nearly every request is read for one or two of its ~100 traces, and
//!   reading (and checksumming and copying) whole values of a few hundred KiB from blob
//!   files was ~5 % of a sampler's CPU;
//! - key `seq ++ 0x01`: the offsets of that request's items already decided (forgotten),
//!   written once per finishing batch that touched the request, so a restart does not
//!   resurrect them;
//! - all go (point deletes, or one range delete for a run of requests that die in the
//!   same batch) once every item of the request is forgotten.
//!
//! In memory: per live request the count of items still buffered and the offsets
//! forgotten; each item's [`Location`] (sequence, chunk and offset, length, kind) is kept
//! by the engine in its trace's index entry, so a trace is found with one lookup. A
//! restart rebuilds both with one scan ([`Storage::scan_buffer`]), which also rewrites
//! values of the previous layouts (one value per request under `seq`; one value per
//! trace group under `trace id ++ seq`).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::sync::{Mutex, MutexGuard};

use otel_tail_shared::otlp::TraceId;
use rocksdb::{DBPinnableSlice, IteratorMode, WriteBatch};
use smallvec::SmallVec;

use super::{BufferedKind, CF_BUFFER, Storage, StorageError, Store};

mod shared;

pub use shared::{SHARED_GROUP_HEAD, SharedGroup};

/// Bytes framing one item in a request value: kind, trace id, payload length.
const FRAME: usize = 1 + 16 + 4;
/// Key length of the layout before this one (trace id ++ sequence), migrated at start.
const LEGACY_KEY_LEN: usize = 24;
/// Items stored under a previous layout, rewritten at start: trace, kind and payload of
/// each, and the old keys that go once they are rewritten.
struct Migrating {
    items: Vec<(TraceId, BufferedKind, Box<[u8]>)>,
    keys: Vec<Box<[u8]>>,
}

/// Largest request value the migration of the previous layouts writes.
const LEGACY_VALUE_BYTES: usize = 16 * 1024 * 1024;
/// Suffix of the key holding a request's forgotten offsets.
const DEAD_SUFFIX: u8 = 1;
/// Suffix of the keys of a request's chunks (followed by the chunk number).
pub(super) const CHUNK_SUFFIX: u8 = 2;
/// Key length of a chunk: sequence, suffix, chunk number.
pub(super) const CHUNK_KEY_LEN: usize = 11;
/// A request value's chunk closes at the first item boundary past this many bytes. An item
/// starts below it, so its payload's offset in the chunk fits the 16 bits a location
/// keeps for it.
pub const CHUNK_BYTES: usize = 32 * 1024;
const _: () = assert!(CHUNK_BYTES + FRAME <= u16::MAX as usize);

/// Identity of one buffered item: its request's sequence and its place there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ItemKey {
    /// Sequence of the request holding it.
    pub seq: u64,
    /// Its chunk (upper 16 bits) and its payload's offset in that chunk (lower 16 bits).
    pub offset: u32,
}

impl ItemKey {
    /// 12 bytes: sequence then offset, big endian (quarantine keys).
    pub fn to_bytes(self) -> [u8; 12] {
        let mut out = [0u8; 12];
        out[..8].copy_from_slice(&self.seq.to_be_bytes());
        out[8..].copy_from_slice(&self.offset.to_be_bytes());
        out
    }
}

/// Where one buffered item lies: 16 bytes, the chunk in the offset's upper 16 bits and
/// the kind (never 0) in the length's top two bits (items are far below 1 GiB). The engine
/// keeps a trace's locations in its index entry, so an `Option<Location>` is 16 bytes too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    seq: u64,
    offset: u32,
    len_kind: NonZeroU32,
}

/// Position of the kind in [`Location::len_kind`].
const KIND_SHIFT: u32 = 30;
/// Longest item a location can describe.
const MAX_ITEM_LEN: u32 = (1 << KIND_SHIFT) - 1;

impl Location {
    fn new(seq: u64, chunk: u16, offset: usize, len: usize, kind: BufferedKind) -> Location {
        let len = u32::try_from(len)
            .ok()
            .filter(|len| *len <= MAX_ITEM_LEN)
            .expect("a buffered item is smaller than 1 GiB");
        let offset = u16::try_from(offset).expect("an item starts within its chunk's 64 KiB");
        Location {
            seq,
            offset: u32::from(chunk) << 16 | u32::from(offset),
            len_kind: NonZeroU32::new(len | u32::from(kind as u8) << KIND_SHIFT)
                .expect("a kind is never 0"),
        }
    }

    /// A location of a one-chunk request's item (tests of the index outside storage).
    #[cfg(test)]
    pub fn for_tests(seq: u64) -> Location {
        Location::new(seq, 0, FRAME, 10, BufferedKind::Spans)
    }

    fn chunk(&self) -> u16 {
        (self.offset >> 16) as u16
    }

    fn len(&self) -> usize {
        (self.len_kind.get() & MAX_ITEM_LEN) as usize
    }

    /// What the item holds.
    pub fn kind(&self) -> BufferedKind {
        BufferedKind::from_byte((self.len_kind.get() >> KIND_SHIFT) as u8)
            .expect("a location holds the kind it was made with")
    }

    /// The payload's byte range in its chunk.
    fn range(&self) -> std::ops::Range<usize> {
        let start = (self.offset & 0xffff) as usize;
        start..start + self.len()
    }

    /// The item's identity (quarantine keys, handoff).
    pub fn key(&self) -> ItemKey {
        ItemKey {
            seq: self.seq,
            offset: self.offset,
        }
    }
}

/// A trace's item locations, in arrival order: usually one.
pub type Locations = SmallVec<[Location; 1]>;

/// The buffered items of one received request, framed into the value stored for it.
#[derive(Debug, Default)]
pub struct RequestValue {
    bytes: Vec<u8>,
    items: Vec<(TraceId, Location)>,
    /// Where each chunk starts in `bytes`.
    chunks: Vec<usize>,
    /// Offsets of the resources framed in the current chunk ([`shared`]).
    resources: Vec<u16>,
}

impl RequestValue {
    /// An empty value with room for `bytes` of payload.
    pub fn with_capacity(bytes: usize) -> RequestValue {
        RequestValue {
            bytes: Vec::with_capacity(bytes),
            ..RequestValue::default()
        }
    }

    /// An empty value with room for the items whose payload lengths are `lens` and for
    /// `resources` bytes of the resources they share (each framed once per chunk), so it
    /// is filled without growing in the common case (a growing value of a few hundred KiB
    /// was reallocated and copied several times per request, each time onto fresh pages).
    pub fn for_items(
        lens: impl ExactSizeIterator<Item = usize>,
        resources: impl Iterator<Item = usize>,
    ) -> RequestValue {
        let items = lens.len();
        let payload: usize = lens.map(|len| FRAME + len).sum();
        let repeats = payload / CHUNK_BYTES + 1;
        let resources: usize = resources.map(|len| FRAME + len).sum();
        let resources = resources.saturating_mul(repeats).min(payload);
        RequestValue {
            bytes: Vec::with_capacity(payload + resources),
            items: Vec::with_capacity(items),
            ..RequestValue::default()
        }
    }

    /// Appends `message` (a `ResourceSpans` or `ResourceLogs` of `trace`'s items), encoded
    /// straight into the value; returns its encoded length.
    pub fn push(
        &mut self,
        trace: TraceId,
        kind: BufferedKind,
        message: &impl prost::Message,
    ) -> usize {
        let len = message.encoded_len();
        self.frame(trace, kind, len);
        message.encode_raw(&mut self.bytes);
        len
    }

    /// Appends a payload of `len` bytes that `write` encodes straight into the value.
    pub fn push_with(
        &mut self,
        trace: TraceId,
        kind: BufferedKind,
        len: usize,
        write: impl FnOnce(&mut Vec<u8>),
    ) {
        self.frame(trace, kind, len);
        let start = self.bytes.len();
        write(&mut self.bytes);
        assert_eq!(
            self.bytes.len() - start,
            len,
            "a buffered item's encoding has the length it announced"
        );
    }

    /// The kind and payload of the item pushed `index`-th.
    pub fn item(&self, index: usize) -> (BufferedKind, Cow<'_, [u8]>) {
        let location = &self.items[index].1;
        let payload = shared::item_payload(self.chunk_bytes(location.chunk()), location)
            .expect("a value reads back the items it framed");
        (location.kind(), payload)
    }

    /// The bytes of chunk `chunk`.
    fn chunk_bytes(&self, chunk: u16) -> &[u8] {
        let chunk = usize::from(chunk);
        let end = self.chunks.get(chunk + 1).copied();
        &self.bytes[self.chunks[chunk]..end.unwrap_or(self.bytes.len())]
    }

    /// Appends an already encoded payload.
    pub fn push_encoded(&mut self, trace: TraceId, kind: BufferedKind, payload: &[u8]) {
        self.frame(trace, kind, payload.len());
        self.bytes.extend_from_slice(payload);
    }

    /// Frames an item of `kind` whose payload follows, in a new chunk if the current one
    /// is full.
    fn frame(&mut self, trace: TraceId, kind: BufferedKind, len: usize) {
        match self.chunks.last() {
            Some(start) if self.bytes.len() - start < CHUNK_BYTES => {}
            _ => self.start_chunk(),
        }
        self.frame_item(kind as u8, trace, kind, len);
    }

    fn start_chunk(&mut self) {
        self.chunks.push(self.bytes.len());
        self.resources.clear();
    }

    /// Where the current chunk starts (0 before the first).
    fn chunk_start(&self) -> usize {
        self.chunks.last().copied().unwrap_or(0)
    }

    /// Frames an item tagged `tag` in the current chunk, its payload to follow, and lists
    /// it as read back as `kind`.
    fn frame_item(&mut self, tag: u8, trace: TraceId, kind: BufferedKind, len: usize) {
        let offset = self.frame_here(tag, trace, len);
        let chunk =
            u16::try_from(self.chunks.len() - 1).expect("a request value stays below 2 GiB");
        self.items
            .push((trace, Location::new(0, chunk, offset, len, kind)));
    }

    /// Writes a frame tagged `tag` in the current chunk; where its payload starts in the
    /// chunk.
    fn frame_here(&mut self, tag: u8, trace: TraceId, len: usize) -> usize {
        self.bytes.reserve(FRAME + len);
        self.bytes.push(tag);
        self.bytes.extend_from_slice(&trace);
        self.bytes.extend_from_slice(&(len as u32).to_le_bytes());
        self.bytes.len() - self.chunk_start()
    }

    /// A copy holding only the items whose flag in `keep` (one per item, in push order) is
    /// set: for a request some of whose traces turned out to be decided already.
    pub fn filtered(&self, keep: &[bool]) -> RequestValue {
        let mut out = RequestValue::with_capacity(self.bytes.len());
        for ((trace, location), _) in self.items.iter().zip(keep).filter(|(_, k)| **k) {
            let chunk = self.chunk_bytes(location.chunk());
            if shared::is_shared(chunk, location) {
                self.copy_shared(&mut out, *trace, location);
            } else {
                out.push_encoded(*trace, location.kind(), &chunk[location.range()]);
            }
        }
        out
    }

    /// Whether nothing was pushed.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Items pushed so far: the next one's place in [`StagedRequest::location`].
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Bytes the value takes in a write batch, record headers included: for sizing the
    /// batch once (a batch growing by doubling copies what it holds at every step).
    pub fn batch_bytes(&self) -> usize {
        // Per chunk: tag, column family, key length and key, value length.
        self.bytes.len() + self.chunks.len() * (1 + 5 + 1 + CHUNK_KEY_LEN + 5)
    }
}

/// A request value staged in a batch: once the batch is written, the engine indexes its
/// items' locations ([`StagedRequest::location`]) or forgets them.
#[must_use = "index or forget its items once the batch is written"]
#[derive(Debug)]
pub struct StagedRequest {
    /// The value with its sequence in every location, for reading items back before they
    /// are indexed.
    value: RequestValue,
}

impl StagedRequest {
    /// The kind and payload of the item staged `index`-th.
    pub fn item(&self, index: usize) -> (BufferedKind, Cow<'_, [u8]>) {
        self.value.item(index)
    }

    fn items(&self) -> &[(TraceId, Location)] {
        &self.value.items
    }

    /// The location of the item staged `index`-th.
    pub fn location(&self, index: usize) -> Location {
        self.value.items[index].1
    }

    /// The trace and location of every item, in staging order.
    #[cfg(test)]
    pub fn locations(&self) -> impl Iterator<Item = (TraceId, Location)> + '_ {
        self.value.items.iter().copied()
    }
}

/// Requests touched by forgetting items, whose on-disk record is brought up to date by
/// [`Storage::write_forgetting`].
#[derive(Debug, Default)]
pub struct Forgetting {
    forgotten: Vec<Location>,
}

impl Forgetting {
    /// Whether nothing was forgotten.
    pub fn is_empty(&self) -> bool {
        self.forgotten.is_empty()
    }

    /// Forgets the items at `locations` (taken out of the index).
    pub fn forget(&mut self, locations: impl IntoIterator<Item = Location>) {
        self.forgotten.extend(locations);
    }
}

/// A live request: items still buffered, the offsets of those forgotten, and how many
/// chunks hold them.
#[derive(Debug, Default)]
struct Request {
    alive: u32,
    dead: Vec<u32>,
    chunks: u32,
}

/// The in-memory side of the layout: the live requests, whose lock is taken once per
/// request written and once per finishing batch, never across a write. Item locations
/// live in the engine's index.
#[derive(Default)]
pub(super) struct Layout {
    requests: Mutex<BTreeMap<u64, Request>>,
    /// Taken for the whole of [`Storage::write_forgetting`]: forgetting writes reach the
    /// database in the order their lists were made, while requests are staged meanwhile.
    forgetting: Mutex<()>,
}

impl Layout {
    /// The locked table of live requests.
    fn requests(&self) -> MutexGuard<'_, BTreeMap<u64, Request>> {
        self.requests.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Bytes of memory held, roughly: for the index gauge.
    fn memory_bytes(&self) -> usize {
        self.requests().len() * (8 + std::mem::size_of::<Request>() + 16)
    }
}

fn chunk_key(seq: u64, chunk: u16) -> [u8; CHUNK_KEY_LEN] {
    let mut key = [0u8; CHUNK_KEY_LEN];
    key[..8].copy_from_slice(&seq.to_be_bytes());
    key[8] = CHUNK_SUFFIX;
    key[9..].copy_from_slice(&chunk.to_be_bytes());
    key
}

pub(super) fn dead_key(seq: u64) -> [u8; 9] {
    let mut key = [0u8; 9];
    key[..8].copy_from_slice(&seq.to_be_bytes());
    key[8] = DEAD_SUFFIX;
    key
}

pub(super) fn encode_offsets(offsets: &[u32]) -> Vec<u8> {
    offsets.iter().flat_map(|o| o.to_le_bytes()).collect()
}

fn decode_offsets(bytes: &[u8]) -> Vec<u32> {
    bytes
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes")))
        .collect()
}

/// A stored chunk: its number and value.
type Chunk = (u16, Box<[u8]>);

/// A framed item: its trace, kind and payload range.
type Frame = (TraceId, BufferedKind, std::ops::Range<usize>);

/// The items framed in chunk `chunk` of a request.
fn parse_chunk(value: &[u8], chunk: u16) -> Result<Vec<(TraceId, Location)>, StorageError> {
    parse_frames(value)?
        .into_iter()
        .map(|(trace, kind, range)| {
            if range.start > usize::from(u16::MAX) {
                return Err(StorageError::Corrupt(format!(
                    "item at {} lies past its chunk's first 64 KiB",
                    range.start
                )));
            }
            Ok((
                trace,
                Location::new(0, chunk, range.start, range.len(), kind),
            ))
        })
        .collect()
}

/// The items framed in `value`, or why it cannot be read.
fn parse_frames(value: &[u8]) -> Result<Vec<Frame>, StorageError> {
    let mut items = Vec::new();
    let mut at = 0usize;
    while at < value.len() {
        let frame = value
            .get(at..at + FRAME)
            .ok_or_else(|| StorageError::Corrupt(format!("truncated item frame at {at}")))?;
        let kind = match frame[0] {
            shared::RESOURCE_TAG => None,
            shared::SHARED_SPANS_TAG => Some(BufferedKind::TraceSpans),
            tag => Some(
                BufferedKind::from_byte(tag)
                    .ok_or_else(|| StorageError::Corrupt(format!("unknown buffer tag {tag}")))?,
            ),
        };
        let trace: TraceId = frame[1..17].try_into().expect("16 bytes");
        let len = u32::from_le_bytes(frame[17..21].try_into().expect("4 bytes"));
        let offset = at + FRAME;
        if len > MAX_ITEM_LEN || offset + len as usize > value.len() {
            return Err(StorageError::Corrupt(format!(
                "item at {offset} of {len} bytes runs past the {}-byte value",
                value.len()
            )));
        }
        if let Some(kind) = kind {
            items.push((trace, kind, offset..offset + len as usize));
        }
        at = offset + len as usize;
    }
    Ok(items)
}

impl Storage {
    /// Stages `value` under a new sequence in `batch`: one put for the whole request. The
    /// request counts as live from here on (until [`Storage::abandon`] if the write fails),
    /// so the range deletes of [`Storage::write_forgetting`] never reach a request being
    /// written.
    pub fn stage_request(&self, batch: &mut WriteBatch, mut value: RequestValue) -> StagedRequest {
        // The sequence is taken and entered in the table at once: a sequence missing from
        // the table is then either dead or above every entry, so a range delete between
        // two entries never reaches a request being written.
        let seq = {
            let mut requests = self.layout.requests();
            let seq = self.next_seq();
            requests.insert(
                seq,
                Request {
                    alive: value.items.len() as u32,
                    dead: Vec::new(),
                    chunks: value.chunks.len() as u32,
                },
            );
            seq
        };
        let cf = self.cf(CF_BUFFER);
        let ends = value
            .chunks
            .iter()
            .skip(1)
            .copied()
            .chain([value.bytes.len()]);
        for (chunk, (start, end)) in value.chunks.iter().zip(ends).enumerate() {
            batch.put_cf(cf, chunk_key(seq, chunk as u16), &value.bytes[*start..end]);
        }
        for (_, location) in &mut value.items {
            location.seq = seq;
        }
        StagedRequest { value }
    }

    /// Forgets a staged request whose batch could not be written.
    pub fn abandon(&self, staged: StagedRequest) {
        if let Some((_, location)) = staged.items().first() {
            self.layout.requests().remove(&location.seq);
        }
    }

    /// Writes `batch` holding `staged` (if any) and hands the staged request back for its
    /// items to be indexed ([`StagedRequest::location`]), or forgets it when the write fails.
    pub fn write_staged(
        &self,
        batch: WriteBatch,
        staged: Option<StagedRequest>,
    ) -> Result<Option<StagedRequest>, StorageError> {
        if let Err(error) = self.write(batch) {
            if let Some(staged) = staged {
                self.abandon(staged);
            }
            return Err(error);
        }
        Ok(staged)
    }

    /// Visits the items at `locations` (one trace's, in arrival order), each with its
    /// location. One point read per request chunk holding any of them.
    pub fn visit_trace(
        &self,
        locations: &[Location],
        mut visit: impl FnMut(Location, BufferedKind, &[u8]),
    ) -> Result<(), StorageError> {
        self.visit_items(
            locations.iter().map(|l| (0, *l)).collect(),
            |_, location, kind, payload| visit(location, kind, payload),
        )
    }

    /// Visits the items at `items` (each location with the index of the trace it belongs
    /// to): one point read per request chunk for all of them (traces decided together
    /// mostly arrived in the same requests). Each trace's items come in the order given;
    /// items of different traces interleave.
    pub fn visit_items(
        &self,
        mut items: Vec<(usize, Location)>,
        mut visit: impl FnMut(usize, Location, BufferedKind, &[u8]),
    ) -> Result<(), StorageError> {
        // Stable: a trace's items at the same place keep their order.
        items.sort_by_key(|(index, l)| (l.seq, *index, l.offset));
        let cf = self.cf(CF_BUFFER);
        let mut current: Option<((u64, u16), Option<DBPinnableSlice<'_>>)> = None;
        for (index, location) in items {
            let at = (location.seq, location.chunk());
            if current.as_ref().is_none_or(|(read, _)| *read != at) {
                let value = self.db.get_pinned_cf(cf, chunk_key(at.0, at.1))?;
                current = Some((at, value));
            }
            let value = current.as_ref().and_then(|(_, v)| v.as_deref());
            match value.and_then(|v| shared::item_payload(v, &location)) {
                Some(payload) => visit(index, location, location.kind(), &payload),
                None => crate::events::corrupt_record(
                    Store::Buffer,
                    &format!(
                        "buffered request {} has no item at {} of chunk {} ({} bytes)",
                        location.seq,
                        location.range().start,
                        location.chunk(),
                        location.len()
                    ),
                ),
            }
        }
        Ok(())
    }

    /// Reads the items at `locations`, in order.
    #[cfg(test)]
    pub fn read_items(
        &self,
        locations: &[Location],
    ) -> Result<Vec<(BufferedKind, Vec<u8>)>, StorageError> {
        let mut out = Vec::new();
        self.visit_trace(locations, |_, kind, payload| {
            out.push((kind, payload.to_vec()))
        })?;
        Ok(out)
    }

    /// Removes what `forgetting` forgot from its requests, then writes `batch` together
    /// with the on-disk record of it: each touched request's forgotten offsets, or its
    /// removal once nothing of it is left (runs of requests with nothing between them that
    /// is still live go with one range delete). These writes are serialised among
    /// themselves, so a request's record on disk never goes back to an older list; requests
    /// are staged meanwhile. Every [`Forgetting`] filled must come here: until then its
    /// requests count the items as alive (one dropped on an error path keeps its requests
    /// until a restart rebuilds the table, as it does the decisions lost there).
    pub fn write_forgetting(
        &self,
        mut batch: WriteBatch,
        forgetting: Forgetting,
    ) -> Result<(), StorageError> {
        let _in_order = self
            .layout
            .forgetting
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        self.record_forgetting(&mut batch, forgetting);
        self.write(batch)
    }

    /// Removes what `forgetting` forgot from the table of live requests and stages the
    /// record of it in `batch` (see [`Storage::write_forgetting`]), under the table's lock.
    fn record_forgetting(&self, batch: &mut WriteBatch, forgetting: Forgetting) {
        let cf = self.cf(CF_BUFFER);
        let mut requests = self.layout.requests();
        let mut touched = Vec::with_capacity(forgetting.forgotten.len());
        for location in forgetting.forgotten {
            if let Some(request) = requests.get_mut(&location.seq) {
                request.alive = request.alive.saturating_sub(1);
                request.dead.push(location.offset);
                touched.push(location.seq);
            }
        }
        touched.sort_unstable();
        touched.dedup();
        let mut dying = Vec::new();
        for seq in touched {
            match requests.get(&seq) {
                Some(request) if request.alive == 0 => dying.push((seq, request.chunks)),
                Some(request) => batch.put_cf(cf, dead_key(seq), encode_offsets(&request.dead)),
                None => {}
            }
        }
        for (seq, _) in &dying {
            requests.remove(seq);
        }
        // Runs of dying requests with no live request between them: one range each.
        let mut run: Option<(u64, u64, u32)> = None;
        for (seq, chunks) in dying {
            run = match run {
                Some((from, to, _)) if requests.range(to..seq).next().is_none() => {
                    Some((from, seq, chunks))
                }
                Some(done) => {
                    delete_run(batch, cf, done);
                    Some((seq, seq, chunks))
                }
                None => Some((seq, seq, chunks)),
            };
        }
        if let Some(done) = run {
            delete_run(batch, cf, done);
        }
    }

    /// Approximate bytes of the in-memory table of live requests.
    pub fn layout_memory_bytes(&self) -> usize {
        self.layout.memory_bytes()
    }

    /// Rebuilds the table of live requests from disk after a restart, visiting every item
    /// still buffered in arrival order with its location, for the engine to index. An item
    /// the visitor refuses (returns `false`: it does not decode) is forgotten; a chunk
    /// whose framing is unreadable is quarantined whole.
    /// Values of the previous layouts are rewritten as chunked requests, visited the same.
    pub fn scan_buffer(
        &self,
        mut visit: impl FnMut(TraceId, Location, BufferedKind, &[u8]) -> bool,
    ) -> Result<(), StorageError> {
        let cf = self.cf(CF_BUFFER);
        let mut chunks: BTreeMap<u64, Vec<Chunk>> = BTreeMap::new();
        let mut whole: Vec<(u64, Box<[u8]>)> = Vec::new();
        let mut dead: BTreeMap<u64, Vec<u32>> = BTreeMap::new();
        let mut strays = Vec::new();
        let mut migrating = Vec::new();
        for item in self.db.iterator_cf(cf, IteratorMode::Start) {
            let (key, value) = item?;
            let seq = |key: &[u8]| u64::from_be_bytes(key[..8].try_into().expect("8 bytes"));
            match key.len() {
                8 => whole.push((seq(&key), value)),
                9 if key[8] == DEAD_SUFFIX => {
                    dead.insert(seq(&key), decode_offsets(&value));
                }
                CHUNK_KEY_LEN if key[8] == CHUNK_SUFFIX => {
                    let chunk = u16::from_be_bytes(key[9..].try_into().expect("2 bytes"));
                    chunks.entry(seq(&key)).or_default().push((chunk, value));
                }
                LEGACY_KEY_LEN => match value.first().and_then(|t| BufferedKind::from_byte(*t)) {
                    Some(kind) => migrating.push(Migrating {
                        items: vec![(
                            key[..16].try_into().expect("16 bytes"),
                            kind,
                            value[1..].into(),
                        )],
                        keys: vec![key],
                    }),
                    None => strays.push((key, value)),
                },
                _ => strays.push((key, value)),
            }
        }
        for (key, value) in strays {
            self.quarantine(
                Store::Buffer,
                &key,
                &value,
                &StorageError::Corrupt(format!("{}-byte buffer key", key.len())),
            )?;
        }
        let mut forgetting = Forgetting::default();
        let mut batch = WriteBatch::default();
        for (seq, values) in chunks {
            let count = values.iter().map(|(c, _)| u32::from(*c) + 1).max();
            let mut request = Request {
                alive: 0,
                dead: dead.remove(&seq).unwrap_or_default(),
                chunks: count.unwrap_or(0),
            };
            let mut items = Vec::new();
            for (chunk, value) in &values {
                match parse_chunk(value, *chunk) {
                    Ok(found) => items.extend(found.into_iter().map(|(trace, mut location)| {
                        location.seq = seq;
                        (trace, location, value)
                    })),
                    Err(error) => {
                        self.quarantine(Store::Buffer, &chunk_key(seq, *chunk), value, &error)?
                    }
                }
            }
            let mut refused = Vec::new();
            for (trace, location, value) in items {
                if request.dead.contains(&location.offset) {
                    continue;
                }
                let Some(payload) = shared::item_payload(value, &location) else {
                    crate::events::corrupt_record(
                        Store::Buffer,
                        &format!(
                            "buffered request {seq} has an item at {} of chunk {} naming a \
                             resource it does not hold",
                            location.range().start,
                            location.chunk()
                        ),
                    );
                    refused.push(location);
                    continue;
                };
                if visit(trace, location, location.kind(), &payload) {
                    request.alive += 1;
                } else {
                    refused.push(location);
                }
            }
            if request.alive == 0 && refused.is_empty() {
                delete_request(&mut batch, cf, seq, request.chunks);
                continue;
            }
            request.alive += refused.len() as u32;
            self.layout.requests().insert(seq, request);
            forgetting.forgotten.extend(refused);
        }
        for (seq, value) in whole {
            let dead_here = dead.remove(&seq).unwrap_or_default();
            match parse_frames(&value) {
                Ok(frames) => migrating.push(Migrating {
                    items: frames
                        .into_iter()
                        .filter(|(_, _, range)| !dead_here.contains(&(range.start as u32)))
                        .map(|(trace, kind, range)| (trace, kind, value[range].into()))
                        .collect(),
                    keys: vec![seq.to_be_bytes().into(), dead_key(seq).into()],
                }),
                Err(error) => {
                    batch.delete_cf(cf, dead_key(seq));
                    self.quarantine(Store::Buffer, &seq.to_be_bytes(), &value, &error)?;
                }
            }
        }
        // Forgotten-offset records whose request is gone.
        for seq in dead.into_keys() {
            batch.delete_cf(cf, dead_key(seq));
        }
        self.write_forgetting(batch, forgetting)?;
        self.migrate(migrating, visit)
    }

    /// Rewrites what the previous layouts stored (one value per trace group under `trace id
    /// ++ seq`; one value per request under `seq`) as chunked requests of up to
    /// [`LEGACY_VALUE_BYTES`], visiting each item like the scan does. The old keys go in
    /// the same write as their items' new value.
    fn migrate(
        &self,
        migrating: Vec<Migrating>,
        mut visit: impl FnMut(TraceId, Location, BufferedKind, &[u8]) -> bool,
    ) -> Result<(), StorageError> {
        if migrating.is_empty() {
            return Ok(());
        }
        let cf = self.cf(CF_BUFFER);
        let mut groups: Vec<Vec<&Migrating>> = vec![Vec::new()];
        let mut bytes = 0;
        for unit in &migrating {
            let size: usize = unit.items.iter().map(|(_, _, p)| p.len()).sum();
            if bytes + size > LEGACY_VALUE_BYTES && groups.last().is_some_and(|g| !g.is_empty()) {
                groups.push(Vec::new());
                bytes = 0;
            }
            bytes += size;
            groups.last_mut().expect("one group at least").push(unit);
        }
        let mut moved = 0;
        for group in groups {
            let mut value = RequestValue::default();
            let mut batch = WriteBatch::default();
            for unit in &group {
                for (trace, kind, payload) in &unit.items {
                    value.push_encoded(*trace, *kind, payload);
                }
                for key in &unit.keys {
                    batch.delete_cf(cf, key);
                }
            }
            if value.is_empty() {
                self.write(batch)?;
                continue;
            }
            let staged = self.stage_request(&mut batch, value);
            let payloads = group.iter().flat_map(|unit| &unit.items);
            let refused: Vec<Location> = staged
                .items()
                .iter()
                .zip(payloads)
                .filter(|((trace, location), (_, _, payload))| {
                    !visit(*trace, *location, location.kind(), payload)
                })
                .map(|((_, location), _)| *location)
                .collect();
            moved += staged.items().len();
            self.write(batch)?;
            let mut forgetting = Forgetting::default();
            forgetting.forget(refused);
            self.write_forgetting(WriteBatch::default(), forgetting)?;
        }
        tracing::info!(
            items = moved,
            "moved buffered items of a previous storage layout into chunked request values"
        );
        Ok(())
    }

    /// Adds to `batch` a copy of one buffered item's payload in quarantine (key: trace id
    /// ++ item key); the item itself is forgotten by the caller with the rest of its trace,
    /// in the same write, and counted ([`crate::events::corrupt_record`]) once written.
    pub fn quarantine_item(
        &self,
        batch: &mut WriteBatch,
        trace: &TraceId,
        key: ItemKey,
        kind: BufferedKind,
        payload: &[u8],
    ) {
        let mut quarantine_key = Vec::with_capacity(1 + 16 + 12);
        quarantine_key.push(Store::Buffer as u8);
        quarantine_key.extend_from_slice(trace);
        quarantine_key.extend_from_slice(&key.to_bytes());
        let mut value = Vec::with_capacity(payload.len() + 1);
        value.push(kind as u8);
        value.extend_from_slice(payload);
        batch.put_cf(self.cf(super::CF_QUARANTINE), quarantine_key, value);
    }
}

/// Deletes the requests `from..=to` (chunks and forgotten-offset records); `chunks` is
/// the last one's chunk count, for point deletes when it is alone.
fn delete_run(
    batch: &mut WriteBatch,
    cf: &rocksdb::ColumnFamily,
    (from, to, chunks): (u64, u64, u32),
) {
    if from == to {
        delete_request(batch, cf, from, chunks);
    } else {
        batch.delete_range_cf(cf, from.to_be_bytes(), to.saturating_add(1).to_be_bytes());
    }
}

/// Deletes one request's chunks and forgotten-offset record with point deletes.
fn delete_request(batch: &mut WriteBatch, cf: &rocksdb::ColumnFamily, seq: u64, chunks: u32) {
    for chunk in 0..chunks {
        batch.delete_cf(cf, chunk_key(seq, chunk as u16));
    }
    batch.delete_cf(cf, dead_key(seq));
}
