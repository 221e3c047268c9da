//! [`HoldStore`]: the crash-safe part of "hold, then choose". Trace-less logs and metric
//! points wait in the RocksDB column family [`CF_HOLD`] for `correlation.window`, so a
//! crash during the hold loses nothing, while a small in-memory index keeps the bounds
//! exact and release in time order cheap.
//!
//! **Layout.** Key = arrival (unix nanoseconds, 8 bytes big endian) ++ sequence (8 bytes
//! big endian, [`Storage::next_seq`]), so key order is arrival order. Value = [`HeldKind`]
//! tag byte ++ the prost encoding of one resource's group (`ResourceLogs` or
//! `ResourceMetrics`, span-metric points included).
//!
//! **Exactly once.** Every change is staged in the caller's `WriteBatch`: [`HoldStore::hold`]
//! in the batch written before the client is acknowledged, [`HoldStore::forget`] in the
//! batch that enqueues the released items for export (raw or summary). A crash before
//! that batch is written leaves the items on disk, and [`HoldStore::recover`] releases
//! them again after restart; after it, they are gone from `hold` and in the export queue.
//! Either way each item leaves exactly once.
//!
//! **Memory.** The index keeps ~64 bytes per held item (key, size, due time, state), not
//! the items, so `max_items` bounds it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use rocksdb::{IteratorMode, WriteBatch};

use super::HoldLimits;
use crate::storage::{CF_HOLD, Storage, StorageError, Store};

#[cfg(test)]
mod tests;

/// What a held value is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum HeldKind {
    /// A `ResourceLogs` holding one resource's log records without a trace id.
    Logs = 1,
    /// A `ResourceMetrics` holding one resource's metric data points.
    Metrics = 2,
    /// A `ResourceLogs` another sampler already settled to the summary path and forwarded
    /// to this one, which owns its resource: due at once, never correlated again.
    SummaryLogs = 3,
    /// A `ResourceMetrics` another sampler already settled to the summary path and
    /// forwarded to this one, which owns its series: due at once, never correlated again.
    SummaryMetrics = 4,
    /// A `ResourceMetrics` of span-metric points counted from one request's spans
    /// ([`crate::rollup::spans`]): held for the window so that the decisions of the traces
    /// its exemplars point at are known, then always rolled up, never kept raw.
    SpanMetrics = 5,
    /// The span-metric points of one request, every input resource's `ResourceMetrics`
    /// in one value (an encoded `ExportMetricsServiceRequest`): one held item per request
    /// instead of one per resource, settled as [`HeldKind::SpanMetrics`] items are. Values
    /// of that kind written before still read as they are.
    SpanMetricsRequest = 6,
}

impl HeldKind {
    /// Whether items of this kind are settled already and wait for no window.
    pub fn settled(self) -> bool {
        matches!(self, HeldKind::SummaryLogs | HeldKind::SummaryMetrics)
    }

    fn from_byte(b: u8) -> Option<HeldKind> {
        match b {
            1 => Some(HeldKind::Logs),
            2 => Some(HeldKind::Metrics),
            3 => Some(HeldKind::SummaryLogs),
            4 => Some(HeldKind::SummaryMetrics),
            5 => Some(HeldKind::SpanMetrics),
            6 => Some(HeldKind::SpanMetricsRequest),
            _ => None,
        }
    }
}

/// Where a held item lives in [`CF_HOLD`]; ordered like its key bytes, i.e. by arrival.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HoldKey {
    /// Arrival, unix nanoseconds (never earlier than a previous arrival in this process).
    pub arrived: u64,
    /// Tie-breaker, unique across restarts.
    pub seq: u64,
}

impl HoldKey {
    /// The 16-byte RocksDB key.
    pub fn to_bytes(self) -> [u8; 16] {
        let mut key = [0u8; 16];
        key[..8].copy_from_slice(&self.arrived.to_be_bytes());
        key[8..].copy_from_slice(&self.seq.to_be_bytes());
        key
    }

    /// Parses a RocksDB key; `None` unless it is 16 bytes.
    pub fn from_bytes(key: &[u8]) -> Option<HoldKey> {
        let key: &[u8; 16] = key.try_into().ok()?;
        let (arrived, seq) = key.split_at(8);
        Some(HoldKey {
            arrived: u64::from_be_bytes(arrived.try_into().ok()?),
            seq: u64::from_be_bytes(seq.try_into().ok()?),
        })
    }
}

/// A failure of the hold store.
#[derive(Debug, thiserror::Error)]
pub enum HoldError {
    /// RocksDB refused an operation.
    #[error("hold store: {0}")]
    Storage(#[from] StorageError),
    /// A stored key or value could not be read back.
    #[error("hold store: corrupt entry: {0}")]
    Corrupt(String),
}

impl From<rocksdb::Error> for HoldError {
    fn from(e: rocksdb::Error) -> HoldError {
        HoldError::Storage(StorageError::Rocks(e))
    }
}

/// What [`HoldStore::hold`] staged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HoldOutcome {
    /// The new item's key.
    pub key: HoldKey,
    /// How many of the oldest items are now over the bounds: the next
    /// [`HoldStore::release_due`] releases them early, whatever the time. Zero when the
    /// store is within its bounds.
    pub over_bounds: usize,
}

/// An item released by [`HoldStore::release_due`], to be settled and then forgotten.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldItem {
    /// What `bytes` encodes.
    pub kind: HeldKind,
    /// The prost encoding of the held group.
    pub bytes: Vec<u8>,
    /// Arrival, unix nanoseconds.
    pub arrived: u64,
    /// Released before its window ended because the store was over a bound.
    pub early: bool,
    /// Its key, for [`HoldStore::forget`].
    pub key: HoldKey,
}

/// Counters of a [`HoldStore`], for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HoldStats {
    /// Items held and not yet released.
    pub held_items: usize,
    /// Bytes (of encoded groups) held and not yet released.
    pub held_bytes: usize,
    /// Items released but not yet forgotten.
    pub in_flight: usize,
    /// Items released early because the store was over a bound, since creation.
    pub released_early: u64,
    /// Items whose hold was staged but never reached disk (the caller's write failed),
    /// dropped from the index one window after they fell due, since creation.
    pub abandoned: u64,
}

/// One indexed item.
#[derive(Debug, Clone, Copy)]
struct Slot {
    /// Encoded group size, as counted against `max_bytes`.
    bytes: usize,
    /// When its window ends, unix nanoseconds.
    due: u64,
    /// Returned by `release_due`, waiting for `forget`.
    released: bool,
}

#[derive(Debug, Default)]
struct Index {
    slots: BTreeMap<HoldKey, Slot>,
    held_items: usize,
    held_bytes: usize,
    latest_arrival: u64,
    released_early: u64,
    abandoned: u64,
}

impl Index {
    fn over_bounds(&self, limits: &HoldLimits) -> bool {
        self.held_items > limits.max_items || self.held_bytes > limits.max_bytes
    }

    fn remove(&mut self, key: &HoldKey) {
        if let Some(slot) = self.slots.remove(key)
            && !slot.released
        {
            self.held_items -= 1;
            self.held_bytes -= slot.bytes;
        }
    }
}

/// Held trace-less logs and metric points: on disk in [`CF_HOLD`], indexed in memory.
///
/// Times are unix nanoseconds passed in. If the clock steps back, a new item's arrival is
/// taken as the latest arrival seen so far (as in [`super::HoldQueue`]), which keeps key
/// order equal to arrival order and only ever holds an item longer, by the step.
///
/// Holding, releasing and forgetting serialise on one mutex; `release_due` reads values
/// from RocksDB under it (mostly memtable hits, as items live one window).
pub struct HoldStore {
    storage: Arc<Storage>,
    limits: HoldLimits,
    window: u64,
    index: Mutex<Index>,
}

impl HoldStore {
    /// A store over `storage`'s [`CF_HOLD`], empty until [`HoldStore::recover`] indexes
    /// what a previous run left.
    pub fn new(storage: Arc<Storage>, limits: HoldLimits) -> HoldStore {
        HoldStore {
            storage,
            limits,
            window: u64::try_from(limits.window.as_nanos()).unwrap_or(u64::MAX),
            index: Mutex::new(Index::default()),
        }
    }

    /// The bounds and window.
    pub fn limits(&self) -> HoldLimits {
        self.limits
    }

    /// Rebuilds the index from disk after a restart; returns how many items are held.
    /// Items keep their original arrival, so each is released once its window has passed
    /// (at once if it already has); an arrival later than `now` (the clock stepped back
    /// across the restart) counts as `now`, so no item is held more than one window from
    /// here. Entries that fail to decode are quarantined (see [`Storage::quarantine`]).
    /// Call before the first [`HoldStore::hold`].
    pub fn recover(&self, now: u64) -> Result<usize, HoldError> {
        let mut index = Index::default();
        let db = self.storage.db();
        for entry in db.iterator_cf(self.storage.cf(CF_HOLD), IteratorMode::Start) {
            let (raw_key, value) = entry?;
            let parsed = HoldKey::from_bytes(&raw_key)
                .ok_or_else(|| HoldError::Corrupt(format!("{}-byte key", raw_key.len())))
                .and_then(|key| Ok((key, split_value(&value)?)));
            let (key, (kind, payload)) = match parsed {
                Ok(parsed) => parsed,
                Err(error) => {
                    self.storage
                        .quarantine(Store::Hold, &raw_key, &value, &error)?;
                    continue;
                }
            };
            index.latest_arrival = index.latest_arrival.max(key.arrived);
            index.held_items += 1;
            index.held_bytes += payload.len();
            let window = if kind.settled() { 0 } else { self.window };
            index.slots.insert(
                key,
                Slot {
                    bytes: payload.len(),
                    due: key.arrived.min(now).saturating_add(window),
                    released: false,
                },
            );
        }
        let held = index.held_items;
        *self.lock() = index;
        Ok(held)
    }

    /// Stages holding `group` (the prost encoding of one resource's `ResourceLogs` or
    /// `ResourceMetrics`, as `kind` says) arriving at `now` in `batch`. The caller writes
    /// the batch before acknowledging the data. Over a bound, [`HoldOutcome::over_bounds`]
    /// says how many of the oldest items the next [`HoldStore::release_due`] releases
    /// early.
    ///
    /// The item is indexed at once; until the batch is written, `release_due` skips it,
    /// and if the write fails it is dropped from the index one window after it fell due
    /// (counted in [`HoldStats::abandoned`]).
    pub fn hold(
        &self,
        batch: &mut WriteBatch,
        kind: HeldKind,
        group: &[u8],
        now: u64,
    ) -> HoldOutcome {
        let mut index = self.lock();
        index.latest_arrival = index.latest_arrival.max(now);
        let key = HoldKey {
            arrived: index.latest_arrival,
            seq: self.storage.next_seq(),
        };
        let mut value = Vec::with_capacity(group.len() + 1);
        value.push(kind as u8);
        value.extend_from_slice(group);
        batch.put_cf(self.storage.cf(CF_HOLD), key.to_bytes(), value);
        let window = if kind.settled() { 0 } else { self.window };
        index.slots.insert(
            key,
            Slot {
                bytes: group.len(),
                due: key.arrived.saturating_add(window),
                released: false,
            },
        );
        index.held_items += 1;
        index.held_bytes += group.len();
        HoldOutcome {
            key,
            over_bounds: self.count_over_bounds(&index),
        }
    }

    /// Releases up to `limit` items, oldest first: first those over a bound (flagged
    /// [`HeldItem::early`]), then those whose window has passed by `now`. A released item
    /// stays on disk and is not released again by this process; the caller settles it and
    /// stages [`HoldStore::forget`] in the batch that enqueues it for export.
    pub fn release_due(&self, now: u64, limit: usize) -> Result<Vec<HeldItem>, HoldError> {
        let mut index = self.lock();
        let db = self.storage.db();
        let cf = self.storage.cf(CF_HOLD);
        let mut out = Vec::new();
        let mut taken_items = 0usize;
        let mut taken_bytes = 0usize;
        let mut released = Vec::new();
        let mut abandoned = Vec::new();
        for (&key, slot) in index.slots.iter().filter(|(_, s)| !s.released) {
            if out.len() >= limit {
                break;
            }
            let early = index.held_items - taken_items > self.limits.max_items
                || index.held_bytes - taken_bytes > self.limits.max_bytes;
            if !early && slot.due > now {
                break;
            }
            // Pinned: the payload is copied once, into the item, not first into a value.
            let Some(value) = db.get_pinned_cf(cf, key.to_bytes())? else {
                if now >= slot.due.saturating_add(self.window) {
                    abandoned.push(key);
                }
                continue;
            };
            let (kind, payload) = split_value(&value)?;
            taken_items += 1;
            taken_bytes += slot.bytes;
            released.push(key);
            out.push(HeldItem {
                kind,
                bytes: payload.to_vec(),
                arrived: key.arrived,
                early: early && slot.due > now,
                key,
            });
        }
        for key in &abandoned {
            index.remove(key);
            index.abandoned += 1;
        }
        for key in &released {
            if let Some(slot) = index.slots.get_mut(key) {
                slot.released = true;
            }
        }
        index.held_items -= taken_items;
        index.held_bytes -= taken_bytes;
        index.released_early += out.iter().filter(|i| i.early).count() as u64;
        Ok(out)
    }

    /// Stages deleting the items at `keys` in `batch`, the same batch that enqueues them
    /// for export, and drops them from the index. If that batch is never written the items
    /// stay on disk and are released again after the next [`HoldStore::recover`], which is
    /// still exactly once because their export was not enqueued either.
    pub fn forget(&self, batch: &mut WriteBatch, keys: &[HoldKey]) {
        let cf = self.storage.cf(CF_HOLD);
        let mut index = self.lock();
        for key in keys {
            batch.delete_cf(cf, key.to_bytes());
            index.remove(key);
        }
    }

    /// When the oldest unreleased item falls due, unix nanoseconds; `None` when nothing
    /// is held.
    pub fn next_due(&self) -> Option<u64> {
        self.lock()
            .slots
            .values()
            .find(|s| !s.released)
            .map(|s| s.due)
    }

    /// Current counters.
    pub fn stats(&self) -> HoldStats {
        let index = self.lock();
        HoldStats {
            held_items: index.held_items,
            held_bytes: index.held_bytes,
            in_flight: index.slots.len() - index.held_items,
            released_early: index.released_early,
            abandoned: index.abandoned,
        }
    }

    /// How many of the oldest unreleased items must go to be within the bounds.
    fn count_over_bounds(&self, index: &Index) -> usize {
        if !index.over_bounds(&self.limits) {
            return 0;
        }
        let mut items = index.held_items;
        let mut bytes = index.held_bytes;
        let mut count = 0;
        for slot in index.slots.values().filter(|s| !s.released) {
            if items <= self.limits.max_items && bytes <= self.limits.max_bytes {
                break;
            }
            items -= 1;
            bytes -= slot.bytes;
            count += 1;
        }
        count
    }

    fn lock(&self) -> MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn split_value(value: &[u8]) -> Result<(HeldKind, &[u8]), HoldError> {
    let (&tag, payload) = value
        .split_first()
        .ok_or_else(|| HoldError::Corrupt("empty value".into()))?;
    let kind =
        HeldKind::from_byte(tag).ok_or_else(|| HoldError::Corrupt(format!("unknown tag {tag}")))?;
    Ok((kind, payload))
}
