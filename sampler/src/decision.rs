//! The decision cache: recent decisions by trace id, so spans and logs that arrive after
//! their trace was decided follow the same decision. Two bounds, as in the Collector
//! (`decision_cache.sampled_cache_size` / `non_sampled_cache_size`), each evicting the
//! least recently used decision approximately (CLOCK: a decision looked up since the
//! eviction hand last passed it gets a second round).
//!
//! Every arriving trace group is looked up and nearly every one is not there (its trace is
//! undecided), and every decided trace is inserted: one hash table names both kinds' entries,
//! so a lookup is one probe, and the entries sit in two flat rings instead of a linked
//! list of allocated nodes per kind (two LRU maps cost ~4 % of a loaded sampler's CPU).

use std::hash::BuildHasher;
use std::sync::Arc;

use hashbrown::HashTable;
use otel_tail_shared::otlp::TraceId;

use crate::buffer::TraceIdHashBuilder;

/// Why a trace was kept, applied to every span exported for it.
#[derive(Debug, Clone, PartialEq)]
pub struct Kept {
    /// Name of the policy that kept the trace (`tailsampling.policy`).
    pub policy: Arc<str>,
    /// Effective sampling probability, when the policy defines one (tracestate `ot=th:`).
    pub probability: Option<f64>,
    /// The policy correlates logs and metric points by resource and time window.
    pub correlate: bool,
}

/// A remembered decision.
#[derive(Debug, Clone, PartialEq)]
pub enum Cached {
    /// The trace was kept.
    Sampled(Kept),
    /// The trace was dropped.
    NotSampled,
}

/// Where a remembered decision is: its ring ([`SAMPLED`] set for the sampled one) and its
/// place there.
type Place = u32;

/// [`Place`] bit of the sampled ring.
const SAMPLED: Place = 1 << 31;

/// A remembered decision in its ring.
#[derive(Debug)]
struct Remembered<V> {
    trace: TraceId,
    value: V,
    /// Looked up since the hand last passed it: it is passed over once more.
    referenced: bool,
}

/// One kind's decisions: at most `capacity`, replaced in CLOCK order once full.
#[derive(Debug)]
struct Ring<V> {
    entries: Vec<Option<Remembered<V>>>,
    capacity: usize,
    /// The next place the ring considers for replacement once full.
    hand: usize,
}

impl<V> Ring<V> {
    /// A ring of `capacity` places, allocated once (untouched pages cost no memory).
    fn new(capacity: usize) -> Self {
        let capacity = capacity.min(SAMPLED as usize);
        Ring {
            entries: Vec::with_capacity(capacity),
            capacity,
            hand: 0,
        }
    }

    /// A place for a new decision: a free one while the ring is not full, else the first
    /// unreferenced one from the hand on (clearing the references it passes), whose
    /// decision is returned for the caller to forget.
    fn make_room(&mut self) -> (usize, Option<TraceId>) {
        if self.entries.len() < self.capacity {
            self.entries.push(None);
            return (self.entries.len() - 1, None);
        }
        loop {
            let at = self.hand;
            self.hand = (self.hand + 1) % self.capacity;
            match &mut self.entries[at] {
                Some(entry) if entry.referenced => entry.referenced = false,
                Some(entry) => return (at, Some(entry.trace)),
                None => return (at, None),
            }
        }
    }

    /// Remembers `value` for `trace` at the place [`Ring::make_room`] gives; that place and
    /// the trace whose decision it replaced, or `None` if the ring is disabled (capacity 0).
    fn put(&mut self, trace: TraceId, value: V) -> Option<(usize, Option<TraceId>)> {
        if self.capacity == 0 {
            return None;
        }
        let (at, evicted) = self.make_room();
        self.entries[at] = Some(Remembered {
            trace,
            value,
            referenced: false,
        });
        Some((at, evicted))
    }

    /// The decisions held, newest first by insertion.
    fn newest_first(&self) -> impl Iterator<Item = &Remembered<V>> {
        let len = self.entries.len();
        (1..=len).filter_map(move |back| self.entries[(self.hand + len - back) % len].as_ref())
    }
}

/// Bounded memory of recent decisions.
pub struct DecisionCache {
    hasher: TraceIdHashBuilder,
    /// Every remembered trace's place, sized once for both bounds.
    table: HashTable<Place>,
    sampled: Ring<Kept>,
    not_sampled: Ring<()>,
    /// Decisions inserted so far.
    version: u64,
}

/// The trace remembered at `place`, if any.
fn trace_at(sampled: &Ring<Kept>, not_sampled: &Ring<()>, place: Place) -> Option<TraceId> {
    let at = (place & !SAMPLED) as usize;
    if place & SAMPLED != 0 {
        sampled.entries.get(at)?.as_ref().map(|e| e.trace)
    } else {
        not_sampled.entries.get(at)?.as_ref().map(|e| e.trace)
    }
}

impl DecisionCache {
    /// Caches of the given sizes; a size of 0 disables that cache.
    pub fn new(sampled: usize, not_sampled: usize) -> Self {
        let sampled = Ring::new(sampled);
        let not_sampled = Ring::new(not_sampled);
        DecisionCache {
            hasher: TraceIdHashBuilder::default(),
            table: HashTable::with_capacity(sampled.capacity + not_sampled.capacity),
            sampled,
            not_sampled,
            version: 0,
        }
    }

    /// Moves with every [`DecisionCache::insert`], the only way a decision gets in: a trace
    /// not found while the version stays the same is not found again, so a caller that
    /// looked it up already can skip the second lookup.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Remembers a decision, replacing one remembered for the trace before.
    pub fn insert(&mut self, trace: TraceId, decision: Cached) {
        self.version += 1;
        let hash = self.hasher.hash_one(trace);
        let (sampled, not_sampled) = (&self.sampled, &self.not_sampled);
        if let Ok(found) = self.table.find_entry(hash, |&place| {
            trace_at(sampled, not_sampled, place) == Some(trace)
        }) {
            let (place, _) = found.remove();
            let at = (place & !SAMPLED) as usize;
            if place & SAMPLED != 0 {
                self.sampled.entries[at] = None;
            } else {
                self.not_sampled.entries[at] = None;
            }
        }
        let put = match decision {
            Cached::Sampled(kept) => self
                .sampled
                .put(trace, kept)
                .map(|(at, evicted)| (at as Place | SAMPLED, evicted)),
            Cached::NotSampled => {
                (self.not_sampled.put(trace, ())).map(|(at, evicted)| (at as Place, evicted))
            }
        };
        let Some((place, evicted)) = put else {
            return;
        };
        self.forget(evicted, place);
        let (sampled, not_sampled, hasher) = (&self.sampled, &self.not_sampled, &self.hasher);
        self.table.insert_unique(hash, place, |&place| {
            let trace = trace_at(sampled, not_sampled, place).expect("the table names held places");
            hasher.hash_one(trace)
        });
    }

    /// Removes the table's entry for `evicted`, the decision that `place` held before.
    fn forget(&mut self, evicted: Option<TraceId>, place: Place) {
        if let Some(trace) = evicted
            && let Ok(found) = self
                .table
                .find_entry(self.hasher.hash_one(trace), |&other| other == place)
        {
            found.remove();
        }
    }

    /// Every remembered decision: the sampled ones, then the others, each newest first by
    /// insertion.
    pub fn entries(&self) -> impl Iterator<Item = (TraceId, Cached)> + '_ {
        let sampled = self
            .sampled
            .newest_first()
            .map(|e| (e.trace, Cached::Sampled(e.value.clone())));
        let not_sampled = self
            .not_sampled
            .newest_first()
            .map(|e| (e.trace, Cached::NotSampled));
        sampled.chain(not_sampled)
    }

    /// The remembered decision for `trace`, if any (which counts as a use of it).
    pub fn get(&mut self, trace: &TraceId) -> Option<Cached> {
        if self.table.is_empty() {
            return None;
        }
        let (sampled, not_sampled) = (&self.sampled, &self.not_sampled);
        let place = *self.table.find(self.hasher.hash_one(trace), |&place| {
            trace_at(sampled, not_sampled, place).as_ref() == Some(trace)
        })?;
        let at = (place & !SAMPLED) as usize;
        if place & SAMPLED != 0 {
            let entry = self.sampled.entries[at].as_mut()?;
            entry.referenced = true;
            Some(Cached::Sampled(entry.value.clone()))
        } else {
            self.not_sampled.entries[at].as_mut()?.referenced = true;
            Some(Cached::NotSampled)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kept(name: &str) -> Cached {
        Cached::Sampled(Kept {
            policy: name.into(),
            probability: None,
            correlate: false,
        })
    }

    #[test]
    fn remembers_both_kinds_within_bounds() {
        let mut cache = DecisionCache::new(2, 1);
        cache.insert([1; 16], kept("a"));
        cache.insert([2; 16], Cached::NotSampled);
        cache.insert([3; 16], kept("b"));
        assert_eq!(cache.get(&[1; 16]), Some(kept("a")));
        assert_eq!(cache.get(&[2; 16]), Some(Cached::NotSampled));
        cache.insert([4; 16], kept("c"));
        assert_eq!(
            cache.get(&[3; 16]),
            None,
            "the entry not used since went, the one looked up stayed"
        );
        cache.insert([5; 16], Cached::NotSampled);
        assert_eq!(cache.get(&[2; 16]), None);
    }

    #[test]
    fn the_rings_and_the_table_agree_through_many_rounds() {
        let mut cache = DecisionCache::new(7, 13);
        let id = |i: u32| {
            let mut trace = [0u8; 16];
            trace[..4].copy_from_slice(&i.to_le_bytes());
            trace
        };
        for i in 0..5_000u32 {
            // Every third decision is sampled; every fifth trace is decided again as the
            // other kind (a handed-over decision), and some are looked up in between.
            let decision = if i % 3 == 0 {
                kept("p")
            } else {
                Cached::NotSampled
            };
            cache.insert(id(i), decision.clone());
            assert_eq!(cache.get(&id(i)), Some(decision), "the newest is held");
            if i % 5 == 0 && i >= 10 {
                let other = match cache.get(&id(i - 10)) {
                    Some(Cached::NotSampled) | None => kept("q"),
                    Some(Cached::Sampled(_)) => Cached::NotSampled,
                };
                cache.insert(id(i - 10), other.clone());
                assert_eq!(cache.get(&id(i - 10)), Some(other), "replaced, not doubled");
            }
            let held: Vec<(TraceId, Cached)> = cache.entries().collect();
            assert_eq!(
                held.len(),
                cache.table.len(),
                "one table entry per decision"
            );
            let sampled = held
                .iter()
                .filter(|(_, d)| *d != Cached::NotSampled)
                .count();
            assert!(
                sampled <= 7 && held.len() - sampled <= 13,
                "within both bounds"
            );
            for (trace, decision) in held {
                assert_eq!(cache.get(&trace), Some(decision));
            }
        }
    }

    #[test]
    fn a_decision_looked_up_outlives_one_that_was_not() {
        let mut cache = DecisionCache::new(0, 3);
        for t in 1..=3u8 {
            cache.insert([t; 16], Cached::NotSampled);
        }
        assert!(cache.get(&[1; 16]).is_some());
        cache.insert([4; 16], Cached::NotSampled);
        cache.insert([5; 16], Cached::NotSampled);
        let held: Vec<TraceId> = cache.entries().map(|(t, _)| t).collect();
        assert!(held.contains(&[1; 16]), "the oldest, but used: {held:?}");
        assert!(!held.contains(&[2; 16]) && !held.contains(&[3; 16]));
        assert_eq!(cache.get(&[9; 16]), None);
    }

    #[test]
    fn the_version_moves_with_every_insert_and_only_then() {
        let mut cache = DecisionCache::new(1, 1);
        let start = cache.version();
        assert_eq!(cache.get(&[1; 16]), None);
        assert_eq!(cache.version(), start, "a lookup changes nothing");
        cache.insert([1; 16], Cached::NotSampled);
        cache.insert([2; 16], kept("a"));
        assert_eq!(cache.version(), start + 2);
    }

    #[test]
    fn zero_size_disables_a_cache() {
        let mut cache = DecisionCache::new(0, 0);
        cache.insert([1; 16], kept("a"));
        assert_eq!(cache.get(&[1; 16]), None);
    }

    #[test]
    fn a_new_decision_replaces_the_other_kind() {
        let mut cache = DecisionCache::new(4, 4);
        cache.insert([1; 16], Cached::NotSampled);
        cache.insert([1; 16], kept("a"));
        assert_eq!(cache.get(&[1; 16]), Some(kept("a")));
    }

    #[test]
    fn entries_list_sampled_decisions_first_then_the_rest_most_recent_first() {
        let mut cache = DecisionCache::new(2, 2);
        cache.insert([1; 16], Cached::NotSampled);
        cache.insert([2; 16], kept("a"));
        cache.insert([3; 16], Cached::NotSampled);
        cache.insert([4; 16], kept("b"));
        cache.insert([5; 16], kept("c"));
        let entries: Vec<(TraceId, Cached)> = cache.entries().collect();
        assert_eq!(
            entries,
            vec![
                ([5; 16], kept("c")),
                ([4; 16], kept("b")),
                ([3; 16], Cached::NotSampled),
                ([1; 16], Cached::NotSampled),
            ],
            "the oldest sampled decision fell out of its bound"
        );
    }
}
