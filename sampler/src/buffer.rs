//! The in-memory index of buffered traces: what each trace's decision needs, and when it
//! is due. Pure logic: time is passed in as milliseconds on the caller's monotonic clock.
//!
//! The spans themselves live in RocksDB (`storage`); a [`Slot`] here is 72 bytes: trace-level
//! facts ([`TraceStats`]), the running policy state ([`PolicyState`]), deadlines and where
//! the trace's first buffered item lies (most traces have one; the others' further items
//! are in a second, small table), so indexing and finishing a trace is one lookup.
//! Deadlines are kept as 4-byte [`Tick`]s, milliseconds after the index's epoch, which
//! moves forward every ~24 days ([`TraceIndex`]); they sit in a queue with lazy
//! invalidation: an entry whose deadline moved later is pushed back when it surfaces
//! instead of being searched for. Most deadlines are queued in the order they fall due (a
//! new trace's is its arrival plus `decision_wait`), so that queue is a FIFO ring with a
//! min-heap beside it for the others ([`Deadlines`]).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::hash::{BuildHasher, Hasher};
use std::sync::OnceLock;

use otel_tail_shared::otlp::TraceId;

use crate::policy::{PolicyState, TraceStats};
use crate::storage::{Location, Locations};

/// Timing rules, in milliseconds.
#[derive(Debug, Clone, Copy)]
pub struct BufferSettings {
    /// Quiet time after a trace's last item before it is due.
    pub decision_wait_ms: u64,
    /// Once the root span is seen, the trace is due this long after it (if sooner).
    pub after_root_ms: Option<u64>,
    /// A trace is due this long after its first item at the latest, however long it keeps
    /// receiving spans (`sampler.max_trace_age`).
    pub max_age_ms: u64,
    /// Most traces held at once.
    pub capacity: usize,
}

/// Generation of a policy set: bumped by each reload, so a trace observed under an earlier
/// set is recognised. Two bytes: a buffered trace lives at most `max_trace_age`, far fewer
/// reloads than the counter takes to wrap.
pub type Generation = u16;

/// [`Slot::generation`] of a trace whose policy state mixes policy sets.
pub const STALE: Generation = Generation::MAX;

/// Milliseconds after a [`TraceIndex`]'s epoch.
pub type Tick = u32;

/// Latest tick a deadline takes: one below [`Tick::MAX`], the "nothing queued" mark.
const LAST_TICK: Tick = Tick::MAX - 1;

/// The index moves its epoch forward once the clock is this far past it, so a deadline up
/// to this far ahead (~24.8 days) is always representable; one further ahead comes sooner,
/// but not before that.
const REBASE_AFTER_MS: u64 = 1 << 31;

/// What the index holds for one trace while it waits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    /// Span counts, bytes and time range.
    pub stats: TraceStats,
    /// Policy conditions met so far.
    pub policy: PolicyState,
    /// When the trace is due for a decision.
    deadline: Tick,
    /// Latest deadline: the maximum trace age from the first item, or sooner once the
    /// root span set one.
    root_deadline: Tick,
    /// Earliest deadline queued in the heap for this trace.
    scheduled: Tick,
    /// Generation of the policy set `policy` was observed under, or [`STALE`] when spans
    /// observed under different sets were merged (the decider observes them again).
    pub generation: Generation,
    /// Whether log records wait with the trace.
    pub has_logs: bool,
    /// Whether the latest deadline is the maximum trace age (not the root span's).
    age_capped: bool,
    /// Where the trace's first buffered item lies (its others are in
    /// [`TraceIndex::more`]).
    first: Option<Location>,
}

/// A trace taken out of the index, with its deadline on the caller's clock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceEntry {
    /// Span counts, bytes and time range.
    pub stats: TraceStats,
    /// Policy conditions met so far.
    pub policy: PolicyState,
    /// When the trace was due for a decision.
    pub deadline_ms: u64,
    /// Generation of the policy set `policy` was observed under (see [`Slot::generation`]).
    pub generation: Generation,
    /// Whether log records wait with the trace.
    pub has_logs: bool,
    /// Whether it became due at the maximum trace age while still receiving spans.
    reached_max_age: bool,
    /// Where its buffered items lie, in arrival order.
    pub items: Locations,
}

impl TraceEntry {
    /// Whether the trace became due because it reached the maximum trace age while it was
    /// still receiving spans.
    pub fn reached_max_age(&self) -> bool {
        self.reached_max_age
    }
}

/// Hasher of trace-id tables: xxh3 keyed with a seed chosen at random once per process.
/// Trace ids come from clients; with an unkeyed hash, ids crafted to collide would turn
/// the index's lookups linear. xxh3 on 16 bytes costs a few nanoseconds.
pub struct TraceIdHasher {
    seed: u64,
    state: u64,
}

impl Hasher for TraceIdHasher {
    fn finish(&self) -> u64 {
        self.state
    }

    fn write(&mut self, bytes: &[u8]) {
        self.state = xxhash_rust::xxh3::xxh3_64_with_seed(bytes, self.seed ^ self.state);
    }

    /// Lengths (a slice's prefix: a trace id hashes as its length, then its bytes) are
    /// folded into the seed of the next write instead of costing an xxh3 call of their own.
    fn write_usize(&mut self, n: usize) {
        self.state ^= (n as u64).rotate_left(32);
    }
}

/// Builds [`TraceIdHasher`]s with this process's seed.
#[derive(Debug, Clone, Copy)]
pub struct TraceIdHashBuilder {
    seed: u64,
}

impl TraceIdHashBuilder {
    /// A builder with an explicit seed (tests).
    pub fn with_seed(seed: u64) -> TraceIdHashBuilder {
        TraceIdHashBuilder { seed }
    }

    /// Which of `parts` parts (shards, lock stripes) `trace` belongs to. The hash's upper
    /// half picks it: tables inside a part use the same keyed hash, and their bucket and
    /// tag bits are elsewhere.
    pub fn part_of(&self, trace: &TraceId, parts: usize) -> usize {
        ((self.hash_one(trace) >> 32) as usize) % parts
    }
}

impl Default for TraceIdHashBuilder {
    /// The process-wide random seed (the standard library's per-process random keys).
    fn default() -> Self {
        static SEED: OnceLock<u64> = OnceLock::new();
        let seed =
            *SEED.get_or_init(|| std::collections::hash_map::RandomState::new().hash_one(0u64));
        TraceIdHashBuilder { seed }
    }
}

impl BuildHasher for TraceIdHashBuilder {
    type Hasher = TraceIdHasher;

    fn build_hasher(&self) -> TraceIdHasher {
        TraceIdHasher {
            seed: self.seed,
            state: 0,
        }
    }
}

/// A map keyed by trace id with [`TraceIdHasher`].
pub type TraceMap<V> = HashMap<TraceId, V, TraceIdHashBuilder>;

/// Heap bytes of `map`'s buckets: entry plus control byte each, the table keeping at most
/// 7/8 of its power-of-two bucket count full (what it holds on the heap, not counted).
pub fn table_bytes<V>(map: &TraceMap<V>) -> usize {
    table_buckets(map.capacity()) * (std::mem::size_of::<(TraceId, V)>() + 1)
}

/// Buckets of a hash table that can hold `capacity` entries: a power of two, at most 7/8 of
/// them full.
fn table_buckets(capacity: usize) -> usize {
    match capacity {
        0 => 0,
        capacity => (capacity * 8 / 7).next_power_of_two(),
    }
}

/// What arrived for a trace in one request.
#[derive(Debug, Clone, Default)]
pub struct Arrival {
    /// Stats of the arriving spans, folded into the trace's.
    pub stats: TraceStats,
    /// Policy state of the arriving spans, merged into the trace's.
    pub policy: PolicyState,
    /// A root span (no parent) is among them.
    pub root: bool,
    /// Log records are among them.
    pub logs: bool,
    /// Generation of the policy set `policy` was observed under (see
    /// [`Slot::generation`]); meaningless without spans.
    pub generation: Generation,
}

impl Arrival {
    /// Folds in what arrived for the same trace in the same request under another resource.
    pub fn merge(&mut self, more: &Arrival) {
        if self.stats.span_count == 0 {
            self.stats = more.stats;
            self.generation = more.generation;
        } else {
            merge_stats(&mut self.stats, &more.stats);
        }
        self.policy.merge(&more.policy);
        self.root |= more.root;
        self.logs |= more.logs;
    }
}

/// What [`TraceIndex::observe`] left: the trace's totals after the arrival (for the
/// per-trace limits, without a second lookup) and the trace a full index removed to make
/// room, for the caller to decide early.
#[derive(Debug)]
pub struct Observed {
    /// Spans the trace holds now.
    pub span_count: u32,
    /// Encoded bytes of its spans now.
    pub bytes: u32,
    /// The trace nearest its deadline, removed because a new trace would exceed the
    /// capacity.
    pub evicted: Option<(TraceId, TraceEntry)>,
}

/// The index of active traces.
pub struct TraceIndex {
    settings: BufferSettings,
    /// What tick 0 is on the caller's clock.
    epoch_ms: u64,
    traces: Slots,
    deadlines: Deadlines,
    /// The item locations of traces with more than one, after their first.
    more: TraceMap<Vec<Location>>,
}

/// Position of a held trace's slot in [`Slots`].
type SlotIndex = u32;

/// Slots per page of [`Slots`]: its memory grows ~88 KiB at a time, not by doubling.
const SLOT_PAGE: usize = 1024;

/// A page of [`Slots`]: each entry a held trace and its slot, or free.
type SlotPage = Box<[Option<(TraceId, Slot)>]>;

/// The slots of held traces, in pages of [`SLOT_PAGE`], found by trace id through a hash
/// table of their 32-bit positions.
///
/// A hash map of (trace id, slot) pairs keeps, between its doublings, a quarter of its
/// 89-byte buckets empty on average; here an empty bucket costs 5 bytes (position and
/// control byte), the pages hold slots densely (a freed one is reused first), and the
/// deadline queue names a slot in 4 bytes instead of a 16-byte trace id.
#[derive(Default)]
struct Slots {
    hasher: TraceIdHashBuilder,
    table: hashbrown::HashTable<SlotIndex>,
    pages: Vec<SlotPage>,
    /// Positions below this have been used; those freed since are in `free`.
    used: SlotIndex,
    free: Vec<SlotIndex>,
}

/// The entry at `at`, if it holds a trace.
fn slot_in(pages: &[SlotPage], at: SlotIndex) -> Option<&(TraceId, Slot)> {
    let at = at as usize;
    pages.get(at / SLOT_PAGE)?[at % SLOT_PAGE].as_ref()
}

impl Slots {
    fn len(&self) -> usize {
        self.table.len()
    }

    fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// Position of `trace`'s slot, if held; `hash` is its [`TraceIdHashBuilder`] hash.
    fn find(&self, hash: u64, trace: &TraceId) -> Option<SlotIndex> {
        let pages = &self.pages;
        self.table
            .find(hash, |&at| {
                slot_in(pages, at).is_some_and(|(t, _)| t == trace)
            })
            .copied()
    }

    fn hash(&self, trace: &TraceId) -> u64 {
        self.hasher.hash_one(trace)
    }

    fn get(&self, trace: &TraceId) -> Option<&Slot> {
        let at = self.find(self.hash(trace), trace)?;
        slot_in(&self.pages, at).map(|(_, slot)| slot)
    }

    fn at_mut(&mut self, at: SlotIndex) -> Option<&mut Slot> {
        let at = at as usize;
        self.pages.get_mut(at / SLOT_PAGE)?[at % SLOT_PAGE]
            .as_mut()
            .map(|(_, slot)| slot)
    }

    /// Holds `slot` for `trace` (not held yet; `hash` is its hash) and returns its position.
    fn insert(&mut self, hash: u64, trace: TraceId, slot: Slot) -> SlotIndex {
        let at = match self.free.pop() {
            Some(at) => at,
            None => {
                let at = self.used;
                self.used = at.checked_add(1).expect("fewer than 2^32 traces held");
                if at as usize == self.pages.len() * SLOT_PAGE {
                    self.pages.push((0..SLOT_PAGE).map(|_| None).collect());
                }
                at
            }
        };
        let index = at as usize;
        self.pages[index / SLOT_PAGE][index % SLOT_PAGE] = Some((trace, slot));
        let (pages, hasher) = (&self.pages, &self.hasher);
        self.table.insert_unique(hash, at, |&other| {
            let (trace, _) = slot_in(pages, other).expect("the table names held slots only");
            hasher.hash_one(trace)
        });
        at
    }

    /// Takes out the trace at `at`, if one is held there.
    fn remove_at(&mut self, at: SlotIndex) -> Option<(TraceId, Slot)> {
        let index = at as usize;
        let (trace, slot) = self.pages.get_mut(index / SLOT_PAGE)?[index % SLOT_PAGE].take()?;
        let hash = self.hash(&trace);
        if let Ok(entry) = self.table.find_entry(hash, |&other| other == at) {
            entry.remove();
        }
        self.free.push(at);
        Some((trace, slot))
    }

    fn remove(&mut self, trace: &TraceId) -> Option<Slot> {
        let at = self.find(self.hash(trace), trace)?;
        self.remove_at(at).map(|(_, slot)| slot)
    }

    fn ids(&self) -> impl Iterator<Item = &TraceId> {
        self.pages
            .iter()
            .flat_map(|page| page.iter())
            .flatten()
            .map(|(trace, _)| trace)
    }

    fn values_mut(&mut self) -> impl Iterator<Item = &mut Slot> {
        self.pages
            .iter_mut()
            .flat_map(|page| page.iter_mut())
            .flatten()
            .map(|(_, slot)| slot)
    }

    /// Heap bytes held: the table's buckets (position and control byte, at most 7/8 of a
    /// power-of-two count full), the pages and the free list.
    fn memory_bytes(&self) -> usize {
        table_buckets(self.table.capacity()) * (std::mem::size_of::<SlotIndex>() + 1)
            + self.pages.len() * SLOT_PAGE * std::mem::size_of::<Option<(TraceId, Slot)>>()
            + self.free.capacity() * std::mem::size_of::<SlotIndex>()
    }
}

/// The queue of (deadline, slot position) entries, earliest first. An entry is stale
/// unless the slot at its position is held with `scheduled` equal to its deadline (a
/// position freed and reused by another trace then names that trace, due at that time).
/// An entry no earlier than the last one queued joins the back of a ring (a new trace's
/// deadline nearly always is), any other the heap; the earliest is the earlier of their
/// fronts. Taking from the ring costs no sifting through a heap of every buffered trace.
#[derive(Default)]
struct Deadlines {
    in_order: VecDeque<(Tick, SlotIndex)>,
    others: BinaryHeap<Reverse<(Tick, SlotIndex)>>,
}

impl Deadlines {
    fn push(&mut self, at: Tick, position: SlotIndex) {
        match self.in_order.back() {
            Some(&(last, _)) if at < last => self.others.push(Reverse((at, position))),
            _ => self.in_order.push_back((at, position)),
        }
    }

    /// Whether the earliest entry is the ring's (else the heap's), if there is one.
    fn earliest_in_order(&self) -> Option<bool> {
        match (self.in_order.front(), self.others.peek()) {
            (Some(ring), Some(Reverse(heap))) => Some(ring <= heap),
            (Some(_), None) => Some(true),
            (None, Some(_)) => Some(false),
            (None, None) => None,
        }
    }

    fn peek(&self) -> Option<(Tick, SlotIndex)> {
        match self.earliest_in_order()? {
            true => self.in_order.front().copied(),
            false => self.others.peek().map(|Reverse(entry)| *entry),
        }
    }

    fn pop(&mut self) -> Option<(Tick, SlotIndex)> {
        match self.earliest_in_order()? {
            true => self.in_order.pop_front(),
            false => self.others.pop().map(|Reverse(entry)| entry),
        }
    }

    /// Heap bytes held.
    fn memory_bytes(&self) -> usize {
        self.in_order.capacity() * std::mem::size_of::<(Tick, SlotIndex)>()
            + self.others.capacity() * std::mem::size_of::<Reverse<(Tick, SlotIndex)>>()
    }

    /// Applies `back` to every entry's tick; `back` keeps their order.
    fn shift(&mut self, back: impl Fn(&mut Tick)) {
        for (at, _) in &mut self.in_order {
            back(at);
        }
        let mut others = std::mem::take(&mut self.others).into_vec();
        for Reverse((at, _)) in &mut others {
            back(at);
        }
        self.others = BinaryHeap::from(others);
    }
}

impl TraceIndex {
    /// An empty index.
    pub fn new(settings: BufferSettings) -> Self {
        TraceIndex {
            settings,
            epoch_ms: 0,
            traces: Slots::default(),
            deadlines: Deadlines::default(),
            more: TraceMap::default(),
        }
    }

    /// Traces currently held.
    pub fn len(&self) -> usize {
        self.traces.len()
    }

    /// Whether no trace is held.
    pub fn is_empty(&self) -> bool {
        self.traces.is_empty()
    }

    /// Heap bytes the index holds: the slots ([`Slots::memory_bytes`]), the deadline
    /// queue and the further item locations. Exported as a gauge and used by the benchmark
    /// to report memory per active trace.
    pub fn memory_bytes(&self) -> usize {
        self.traces.memory_bytes()
            + self.deadlines.memory_bytes()
            + table_bytes(&self.more)
            + self
                .more
                .values()
                .map(|v| v.capacity() * std::mem::size_of::<Location>())
                .sum::<usize>()
    }

    /// Where `trace`'s buffered items lie, in arrival order (none if it is not held).
    #[cfg(test)]
    pub fn items(&self, trace: &TraceId) -> Vec<Location> {
        let first = self.traces.get(trace).and_then(|slot| slot.first);
        let more = self.more.get(trace).map_or(&[][..], Vec::as_slice);
        first.into_iter().chain(more.iter().copied()).collect()
    }

    /// Ids of the traces held.
    pub fn trace_ids(&self) -> impl Iterator<Item = &TraceId> {
        self.traces.ids()
    }

    /// The slot of `trace`, if held.
    pub fn get(&self, trace: &TraceId) -> Option<&Slot> {
        self.traces.get(trace)
    }

    /// `at_ms` as a tick, capped at [`LAST_TICK`] (and at 0 before the epoch).
    fn tick(&self, at_ms: u64) -> Tick {
        Tick::try_from(at_ms.saturating_sub(self.epoch_ms))
            .unwrap_or(LAST_TICK)
            .min(LAST_TICK)
    }

    /// `tick` on the caller's clock.
    fn ms(&self, tick: Tick) -> u64 {
        self.epoch_ms + u64::from(tick)
    }

    /// Moves the epoch forward once `now_ms` is [`REBASE_AFTER_MS`] past it: to the earliest
    /// queued deadline (nothing stored is earlier) or, if that is long overdue, to half that
    /// span before now, where older deadlines (due anyway) are kept as the new tick 0.
    fn rebase(&mut self, now_ms: u64) {
        let now = now_ms.saturating_sub(self.epoch_ms);
        if now < REBASE_AFTER_MS {
            return;
        }
        let earliest = self.deadlines.peek().map_or(now, |(at, _)| u64::from(at));
        let shift = earliest.min(now).max(now - REBASE_AFTER_MS / 2);
        let back = |tick: &mut Tick| {
            // The result is at most `tick`, so it fits.
            *tick = u64::from(*tick).saturating_sub(shift) as Tick;
        };
        for slot in self.traces.values_mut() {
            back(&mut slot.deadline);
            back(&mut slot.root_deadline);
            back(&mut slot.scheduled);
        }
        self.deadlines.shift(back);
        self.epoch_ms += shift;
    }

    /// Folds an arrival into `trace` at `now_ms`, creating the entry if needed, with where
    /// its buffered items lie (`items`, appended to the trace's). When a new trace would
    /// exceed the capacity, the trace nearest its deadline is removed and returned so the
    /// caller decides it early.
    pub fn observe(
        &mut self,
        trace: TraceId,
        arrival: &Arrival,
        items: &[Location],
        now_ms: u64,
    ) -> Observed {
        self.rebase(now_ms);
        let mut evicted = None;
        // The length first: the lookup only matters once the index is full.
        let hash = self.traces.hash(&trace);
        let mut held = self.traces.find(hash, &trace);
        if held.is_none() && self.traces.len() >= self.settings.capacity {
            evicted = self.pop_earliest();
        }
        let waited = self.tick(now_ms.saturating_add(self.settings.decision_wait_ms));
        let aged = self.tick(now_ms.saturating_add(self.settings.max_age_ms));
        let after_root = self
            .settings
            .after_root_ms
            .map(|after| self.tick(now_ms.saturating_add(after)));
        let at = *held.get_or_insert_with(|| {
            let slot = Slot {
                stats: TraceStats {
                    min_start_unix_nano: u64::MAX,
                    ..TraceStats::default()
                },
                policy: PolicyState::default(),
                deadline: waited,
                root_deadline: aged,
                scheduled: Tick::MAX,
                generation: arrival.generation,
                has_logs: false,
                age_capped: true,
                first: None,
            };
            self.traces.insert(hash, trace, slot)
        });
        let slot = self.traces.at_mut(at).expect("a slot just found or made");
        let rest = match (slot.first, items) {
            (None, [first, rest @ ..]) => {
                slot.first = Some(*first);
                rest
            }
            _ => items,
        };
        if !rest.is_empty() {
            self.more.entry(trace).or_default().extend_from_slice(rest);
        }
        if arrival.stats.span_count > 0 {
            let same = slot.stats.span_count == 0 || slot.generation == arrival.generation;
            slot.generation = if same { arrival.generation } else { STALE };
        }
        merge_stats(&mut slot.stats, &arrival.stats);
        slot.policy.merge(&arrival.policy);
        slot.has_logs |= arrival.logs;
        if arrival.root
            && let Some(root) = after_root
            && root < slot.root_deadline
        {
            slot.root_deadline = root;
            slot.age_capped = false;
        }
        slot.deadline = waited.min(slot.root_deadline);
        let observed = Observed {
            span_count: slot.stats.span_count,
            bytes: slot.stats.bytes,
            evicted,
        };
        if slot.deadline < slot.scheduled {
            slot.scheduled = slot.deadline;
            self.deadlines.push(slot.deadline, at);
        }
        observed
    }

    /// Removes and returns every trace whose deadline is at or before `now_ms`.
    pub fn pop_due(&mut self, now_ms: u64, limit: usize) -> Vec<(TraceId, TraceEntry)> {
        self.rebase(now_ms);
        let now = self.tick(now_ms);
        let mut due = Vec::new();
        while due.len() < limit {
            let Some((at, position)) = self.deadlines.peek() else {
                break;
            };
            if at > now {
                break;
            }
            self.deadlines.pop();
            if let Some(found) = self.settle(at, position, Some(now)) {
                due.push(found);
            }
        }
        due
    }

    /// The earliest time any trace may become due, if any is held.
    pub fn next_deadline(&self) -> Option<u64> {
        self.deadlines.peek().map(|(at, _)| self.ms(at))
    }

    /// Removes `trace` (e.g. decided through another path).
    pub fn remove(&mut self, trace: &TraceId) -> Option<TraceEntry> {
        let slot = self.traces.remove(trace)?;
        Some(self.taken(trace, slot))
    }

    /// Removes every trace, earliest deadline first (used at shutdown and in tests).
    pub fn drain(&mut self) -> Vec<(TraceId, TraceEntry)> {
        let mut all = Vec::with_capacity(self.traces.len());
        while let Some(found) = self.pop_earliest() {
            all.push(found);
        }
        all
    }

    fn pop_earliest(&mut self) -> Option<(TraceId, TraceEntry)> {
        while let Some((at, position)) = self.deadlines.pop() {
            if let Some(found) = self.settle(at, position, None) {
                return Some(found);
            }
        }
        None
    }

    /// Handles a queue entry (`at`, `position`) just popped: skips stale ones and re-queues a
    /// trace whose deadline moved later than `at`. A trace whose deadline is at or before
    /// `now` is removed and returned; with `now` `None` (eviction) a trace is returned once
    /// its queue entry matches its real deadline, i.e. the earliest deadline.
    fn settle(
        &mut self,
        at: Tick,
        position: SlotIndex,
        now: Option<Tick>,
    ) -> Option<(TraceId, TraceEntry)> {
        let slot = self.traces.at_mut(position)?;
        if slot.scheduled != at {
            return None;
        }
        if slot.deadline > now.unwrap_or(at) {
            slot.scheduled = slot.deadline;
            self.deadlines.push(slot.deadline, position);
            return None;
        }
        let (trace, slot) = self.traces.remove_at(position)?;
        Some((trace, self.taken(&trace, slot)))
    }

    /// The slot of `trace`, just removed, with its deadline on the caller's clock and all
    /// its item locations.
    fn taken(&mut self, trace: &TraceId, slot: Slot) -> TraceEntry {
        let mut items: Locations = slot.first.into_iter().collect();
        if !self.more.is_empty()
            && let Some(more) = self.more.remove(trace)
        {
            items.extend(more);
        }
        TraceEntry {
            items,
            deadline_ms: self.ms(slot.deadline),
            reached_max_age: slot.age_capped && slot.deadline == slot.root_deadline,
            stats: slot.stats,
            policy: slot.policy,
            generation: slot.generation,
            has_logs: slot.has_logs,
        }
    }
}

/// Folds `more` into `into`.
pub fn merge_stats(into: &mut TraceStats, more: &TraceStats) {
    if more.span_count == 0 {
        return;
    }
    into.span_count += more.span_count;
    into.bytes = into.bytes.saturating_add(more.bytes);
    into.min_start_unix_nano = into.min_start_unix_nano.min(more.min_start_unix_nano);
    into.max_end_unix_nano = into.max_end_unix_nano.max(more.max_end_unix_nano);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_id_hashes_are_keyed() {
        let id: TraceId = [7; 16];
        let a = TraceIdHashBuilder::with_seed(1);
        let b = TraceIdHashBuilder::with_seed(2);
        assert_eq!(a.hash_one(id), a.hash_one(id));
        assert_ne!(
            a.hash_one(id),
            b.hash_one(id),
            "the seed changes every hash"
        );
        let process = TraceIdHashBuilder::default();
        assert_eq!(
            process.hash_one(id),
            TraceIdHashBuilder::default().hash_one(id)
        );
        // Ids equal in their first half (what the former unkeyed hash leaned on) differ.
        let mut other = id;
        other[15] ^= 1;
        assert_ne!(process.hash_one(id), process.hash_one(other));
    }

    #[test]
    fn spans_observed_under_different_policy_sets_mark_the_trace_stale() {
        let mut index = TraceIndex::new(settings());
        let t = [1u8; 16];
        let logs_only = Arrival {
            logs: true,
            generation: 7,
            ..Arrival::default()
        };
        index.observe(t, &logs_only, &[], 0);
        let mut first = spans(1);
        first.generation = 2;
        index.observe(t, &first, &[], 0);
        assert_eq!(
            index.get(&t).unwrap().generation,
            2,
            "logs carry no policy state"
        );
        index.observe(t, &first, &[], 1);
        assert_eq!(index.get(&t).unwrap().generation, 2);
        let mut later = spans(1);
        later.generation = 3;
        index.observe(t, &later, &[], 2);
        assert_eq!(index.get(&t).unwrap().generation, STALE);
        index.observe(t, &later, &[], 3);
        assert_eq!(
            index.get(&t).unwrap().generation,
            STALE,
            "stale until decided"
        );
    }

    fn settings() -> BufferSettings {
        BufferSettings {
            decision_wait_ms: 1000,
            after_root_ms: Some(100),
            capacity: 3,
            max_age_ms: 5000,
        }
    }

    #[test]
    fn a_trace_leaves_with_its_item_locations_in_arrival_order() {
        let mut index = TraceIndex::new(settings());
        let at = |seq| Location::for_tests(seq);
        let (a, b) = ([1u8; 16], [2u8; 16]);
        index.observe(a, &spans(1), &[at(5)], 0);
        index.observe(b, &spans(1), &[at(5)], 0);
        index.observe(a, &spans(1), &[at(6), at(7)], 1);
        index.observe(a, &spans(1), &[at(8)], 2);
        assert_eq!(index.more.len(), 1, "only the trace with several items");
        let seqs = |entry: TraceEntry| entry.items.iter().map(|l| l.key().seq).collect::<Vec<_>>();
        assert_eq!(seqs(index.remove(&a).unwrap()), [5, 6, 7, 8]);
        assert!(index.more.is_empty(), "its further items left with it");
        let due = index.pop_due(10_000, 10);
        assert_eq!(due.len(), 1);
        assert_eq!(seqs(due[0].1.clone()), [5]);
        // A trace made again after it left starts from its new items only.
        index.observe(a, &spans(1), &[at(9)], 20_000);
        assert_eq!(seqs(index.remove(&a).unwrap()), [9]);
        assert!(index.memory_bytes() > 0);
    }

    #[test]
    fn a_trace_that_keeps_receiving_spans_is_due_at_its_maximum_age() {
        let mut index = TraceIndex::new(settings());
        let trace = [9; 16];
        for at in (0..=6000).step_by(500) {
            index.observe(trace, &spans(1), &[], at);
            if at < 5000 {
                assert!(index.pop_due(at, 10).is_empty(), "still young at {at}");
            }
        }
        let due = index.pop_due(6000, 10);
        assert_eq!(due.len(), 1, "due at 5000 although spans kept coming");
        assert_eq!(due[0].1.deadline_ms, 5000);
        assert!(due[0].1.reached_max_age());
        // A quiet trace is due decision_wait after its last span, not by age.
        index.observe([8; 16], &spans(1), &[], 10_000);
        let quiet = index.pop_due(11_000, 10);
        assert_eq!(quiet.len(), 1);
        assert!(!quiet[0].1.reached_max_age());
    }

    fn spans(n: u32) -> Arrival {
        Arrival {
            stats: TraceStats {
                span_count: n,
                bytes: 100 * n,
                min_start_unix_nano: 10,
                max_end_unix_nano: 20,
            },
            ..Arrival::default()
        }
    }

    #[test]
    fn memory_estimate_grows_with_traces() {
        let mut index = TraceIndex::new(BufferSettings {
            capacity: 100_000,
            ..settings()
        });
        assert_eq!(index.memory_bytes(), 0);
        let mut observe = |from: u32, to: u32| {
            for i in from..to {
                let mut id = [0u8; 16];
                id[..4].copy_from_slice(&i.to_le_bytes());
                id[15] = 1;
                index.observe(id, &spans(1), &[], 0);
            }
            index.memory_bytes()
        };
        let small = observe(0, 1000);
        assert!((1000 * 88..1000 * 144).contains(&small), "{small}");
        let large = observe(1000, 10_000);
        // A held slot is 88 bytes with its trace id; the table and the deadline queue add 5
        // and 8 a bucket.
        assert!((10_000 * 96..10_000 * 144).contains(&large), "{large}");
    }

    #[test]
    fn freed_slots_are_reused_and_stale_queue_entries_do_not_decide_their_new_trace_early() {
        let mut index = TraceIndex::new(settings());
        // Trace 1 is taken out by another path: its queue entry stays behind.
        index.observe([1; 16], &spans(1), &[], 0);
        assert!(index.remove(&[1; 16]).is_some());
        // Trace 2 reuses its slot, due later.
        index.observe([2; 16], &spans(1), &[], 300);
        assert_eq!(index.traces.pages.len(), 1);
        assert_eq!(index.traces.used, 1, "the freed position was reused");
        assert!(
            index.pop_due(1000, 10).is_empty(),
            "trace 1's entry does not decide trace 2"
        );
        let due = index.pop_due(1300, 10);
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].0, [2; 16]);
        assert!(index.is_empty());
        assert!(index.get(&[2; 16]).is_none());
    }

    #[test]
    fn an_index_slot_stays_small() {
        // The per-trace memory target (<= 256 bytes including table slack and the deadline
        // queue) depends on this: id 16, stats 24, policy state 16 (condition bits and the
        // dynamic policies' key-value pointer), three deadline ticks 12, generation 2, two
        // flags, the first item's location 16 (no room for the `Option`: a location's
        // length-and-kind is never 0); a free page entry takes no more room than a held one.
        assert_eq!(std::mem::size_of::<Option<(TraceId, Slot)>>(), 88);
        assert_eq!(std::mem::size_of::<Option<Location>>(), 16);
        assert_eq!(std::mem::size_of::<Reverse<(Tick, SlotIndex)>>(), 8);
    }

    #[test]
    fn deadlines_come_out_earliest_first_whatever_order_they_went_in() {
        let mut queue = Deadlines::default();
        for (at, position) in [(10, 1), (20, 2), (15, 3), (20, 4), (5, 5), (30, 6), (25, 7)] {
            queue.push(at, position);
        }
        assert_eq!(queue.in_order.len(), 4, "10, 20, 20 and 30 joined the ring");
        assert_eq!(queue.peek(), Some((5, 5)));
        let mut out = Vec::new();
        while let Some(entry) = queue.pop() {
            out.push(entry);
        }
        assert_eq!(
            out,
            vec![(5, 5), (10, 1), (15, 3), (20, 2), (20, 4), (25, 7), (30, 6)]
        );
        assert_eq!(queue.peek(), None);
    }

    #[test]
    fn a_trace_due_before_later_queued_ones_is_decided_on_time() {
        // Trace 1's root span brings its deadline before trace 2's, queued earlier.
        let mut index = TraceIndex::new(settings());
        index.observe([1; 16], &spans(1), &[], 0);
        index.observe([2; 16], &spans(1), &[], 500);
        index.observe(
            [1; 16],
            &Arrival {
                root: true,
                ..spans(1)
            },
            &[],
            600,
        );
        let due: Vec<TraceId> = index.pop_due(700, 10).into_iter().map(|(t, _)| t).collect();
        assert_eq!(due, vec![[1; 16]]);
        assert!(
            index.pop_due(1499, 10).is_empty(),
            "trace 1's first entry is stale"
        );
        assert_eq!(index.pop_due(1500, 10)[0].0, [2; 16]);
        assert!(index.is_empty());
    }

    #[test]
    fn deadlines_keep_their_time_when_the_epoch_moves_forward() {
        let mut index = TraceIndex::new(settings());
        let before = REBASE_AFTER_MS - 10;
        index.observe([1; 16], &spans(1), &[], before);
        let after = REBASE_AFTER_MS + 500;
        index.observe([2; 16], &spans(1), &[], after);
        assert!(index.epoch_ms > 0, "the second arrival moved the epoch");
        assert_eq!(index.next_deadline(), Some(before + 1000));
        assert!(index.pop_due(before + 999, 10).is_empty());
        let first = index.pop_due(before + 1000, 10);
        assert_eq!(first.len(), 1);
        assert_eq!(
            (first[0].0, first[0].1.deadline_ms),
            ([1; 16], before + 1000)
        );
        assert!(index.pop_due(after + 999, 10).is_empty());
        assert_eq!(
            index.pop_due(after + 1000, 10)[0].1.deadline_ms,
            after + 1000
        );
        // A clock far from zero (a test clock, a long uptime) works from its first reading.
        let far = 40 * REBASE_AFTER_MS + 7;
        index.observe([3; 16], &spans(1), &[], far);
        index.observe(
            [3; 16],
            &Arrival {
                root: true,
                ..spans(1)
            },
            &[],
            far + 20,
        );
        assert_eq!(index.next_deadline(), Some(far + 120));
        let due = index.pop_due(far + 120, 10);
        assert_eq!(due[0].1.deadline_ms, far + 120);
        assert!(!due[0].1.reached_max_age());
    }

    #[test]
    fn an_overdue_trace_is_still_due_first_after_the_epoch_moves() {
        let mut index = TraceIndex::new(settings());
        index.observe([1; 16], &spans(1), &[], 5);
        // Nobody decided for ~37 days: the overdue trace is kept at the new epoch, ahead of
        // one that arrives now.
        let late = REBASE_AFTER_MS + REBASE_AFTER_MS / 2;
        index.observe([2; 16], &spans(1), &[], late);
        let due = index.pop_due(late + 1000, 10);
        assert_eq!(
            due.iter().map(|d| d.0).collect::<Vec<_>>(),
            vec![[1; 16], [2; 16]]
        );
    }

    #[test]
    fn a_deadline_beyond_the_tick_range_comes_no_sooner_than_the_range() {
        let mut index = TraceIndex::new(BufferSettings {
            decision_wait_ms: 60 * 24 * 3600 * 1000,
            max_age_ms: 60 * 24 * 3600 * 1000,
            ..settings()
        });
        index.observe([1; 16], &spans(1), &[], 0);
        let at = index.next_deadline().expect("queued");
        assert!(
            (REBASE_AFTER_MS..60 * 24 * 3600 * 1000).contains(&at),
            "{at}"
        );
        assert!(index.pop_due(REBASE_AFTER_MS - 1, 10).is_empty());
        assert_eq!(index.pop_due(at, 10).len(), 1);
    }

    #[test]
    fn trace_is_due_decision_wait_after_its_last_span() {
        let mut index = TraceIndex::new(settings());
        index.observe([1; 16], &spans(1), &[], 0);
        index.observe([1; 16], &spans(2), &[], 500);
        assert!(index.pop_due(1000, 10).is_empty(), "deadline moved to 1500");
        let due = index.pop_due(1500, 10);
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].1.stats.span_count, 3);
        assert!(index.is_empty());
    }

    #[test]
    fn root_span_shortens_the_wait() {
        let mut index = TraceIndex::new(settings());
        index.observe([1; 16], &spans(1), &[], 0);
        let root = Arrival {
            root: true,
            ..spans(1)
        };
        index.observe([1; 16], &root, &[], 50);
        assert_eq!(index.next_deadline(), Some(150));
        assert_eq!(index.pop_due(150, 10).len(), 1);
    }

    #[test]
    fn spans_after_the_root_do_not_extend_past_the_root_deadline() {
        let mut index = TraceIndex::new(settings());
        index.observe(
            [1; 16],
            &Arrival {
                root: true,
                ..spans(1)
            },
            &[],
            0,
        );
        index.observe([1; 16], &spans(1), &[], 90);
        assert_eq!(index.pop_due(100, 10).len(), 1);
    }

    #[test]
    fn full_index_evicts_the_trace_nearest_its_deadline() {
        let mut index = TraceIndex::new(settings());
        assert!(index.observe([1; 16], &spans(1), &[], 0).evicted.is_none());
        assert!(index.observe([2; 16], &spans(1), &[], 10).evicted.is_none());
        assert!(index.observe([3; 16], &spans(1), &[], 20).evicted.is_none());
        let again = index.observe([1; 16], &spans(1), &[], 30);
        assert_eq!(
            (again.span_count, again.bytes),
            (2, 200),
            "the trace's totals"
        );
        let evicted = index
            .observe([4; 16], &spans(1), &[], 40)
            .evicted
            .expect("capacity reached");
        assert_eq!(evicted.0, [2; 16]);
        assert_eq!(index.len(), 3);
        assert!(index.get(&[2; 16]).is_none());
        // The stale heap entry of trace 1 (deadline 1000) is skipped; it is due at 1030.
        assert_eq!(
            index
                .pop_due(1020, 10)
                .iter()
                .map(|d| d.0)
                .collect::<Vec<_>>(),
            vec![[3; 16]]
        );
        assert_eq!(index.pop_due(1030, 10).len(), 1);
    }

    #[test]
    fn stats_and_flags_accumulate() {
        let mut index = TraceIndex::new(settings());
        let mut late_start = spans(1);
        late_start.stats.min_start_unix_nano = 5;
        late_start.stats.max_end_unix_nano = 50;
        index.observe([9; 16], &spans(2), &[], 0);
        index.observe([9; 16], &late_start, &[], 1);
        index.observe(
            [9; 16],
            &Arrival {
                logs: true,
                ..Arrival::default()
            },
            &[],
            2,
        );
        let e = index.get(&[9; 16]).unwrap();
        assert_eq!(e.stats.span_count, 3);
        assert_eq!(e.stats.min_start_unix_nano, 5);
        assert_eq!(e.stats.max_end_unix_nano, 50);
        assert!(e.has_logs);
    }

    #[test]
    fn pop_due_respects_limit_and_drain_empties() {
        let mut index = TraceIndex::new(BufferSettings {
            capacity: 100,
            ..settings()
        });
        for i in 0..10u8 {
            index.observe([i + 1; 16], &spans(1), &[], i as u64);
        }
        assert_eq!(index.pop_due(5000, 4).len(), 4);
        assert_eq!(index.drain().len(), 6);
        assert!(index.is_empty());
        assert!(index.next_deadline().is_none());
    }
}
