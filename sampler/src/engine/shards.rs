//! The engine's per-trace state split by trace id: each shard has its own index of
//! buffered traces and its own decision cache behind its own lock, so requests for
//! different traces are indexed and routed in parallel, and the decider works through one
//! shard at a time while the others keep taking spans.
//!
//! A trace always maps to the same shard (a keyed hash of its id), so everything the
//! engine guarantees per trace under "the state lock" holds under that trace's shard lock.

use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

use otel_tail_shared::otlp::TraceId;

use crate::buffer::{BufferSettings, TraceIdHashBuilder, TraceIndex};
use crate::decision::DecisionCache;

/// Most shards.
pub const MAX_SHARDS: usize = 16;
/// Fewest traces (and cached decisions) a shard is sized for: below this a bound is not
/// split, so a small `num_traces` or cache keeps its exact, global meaning.
pub const MIN_SHARD_CAPACITY: usize = 4096;

/// Index and cache of one shard's traces, guarded together.
pub struct State {
    pub index: TraceIndex,
    pub cache: DecisionCache,
}

struct Shard {
    state: Mutex<State>,
    /// Traces in the shard's index as of the last release of its lock.
    traces: AtomicUsize,
}

/// The shards, and which one a trace id belongs to.
pub struct Shards {
    shards: Box<[Shard]>,
    hasher: TraceIdHashBuilder,
}

/// A locked shard. Releasing it records the shard's trace count.
pub struct ShardGuard<'a> {
    state: MutexGuard<'a, State>,
    traces: &'a AtomicUsize,
}

impl Deref for ShardGuard<'_> {
    type Target = State;

    fn deref(&self) -> &State {
        &self.state
    }
}

impl DerefMut for ShardGuard<'_> {
    fn deref_mut(&mut self) -> &mut State {
        &mut self.state
    }
}

impl Drop for ShardGuard<'_> {
    fn drop(&mut self) {
        self.traces.store(self.state.index.len(), Ordering::Relaxed);
    }
}

/// How many shards bound `capacity` traces and caches of `sampled` and `not_sampled`
/// decisions (0: disabled): as many as keep each shard's share of every bound at least
/// [`MIN_SHARD_CAPACITY`], at most [`MAX_SHARDS`].
pub fn shard_count(capacity: usize, sampled: usize, not_sampled: usize) -> usize {
    let smallest = [capacity, sampled, not_sampled]
        .into_iter()
        .filter(|&n| n > 0)
        .min()
        .unwrap_or(capacity);
    (smallest / MIN_SHARD_CAPACITY).clamp(1, MAX_SHARDS)
}

/// `total` split `shards` ways, rounding up (0 stays 0: a disabled cache stays disabled).
fn share(total: usize, shards: usize) -> usize {
    total.div_ceil(shards)
}

impl Shards {
    /// Shards for an index with `settings` and a decision cache of `sampled` and
    /// `not_sampled` entries, each bound split evenly among them.
    pub fn new(settings: BufferSettings, sampled: usize, not_sampled: usize) -> Shards {
        let count = shard_count(settings.capacity, sampled, not_sampled);
        let shards = (0..count)
            .map(|_| Shard {
                state: Mutex::new(State {
                    index: TraceIndex::new(BufferSettings {
                        capacity: share(settings.capacity, count),
                        ..settings
                    }),
                    cache: DecisionCache::new(share(sampled, count), share(not_sampled, count)),
                }),
                traces: AtomicUsize::new(0),
            })
            .collect();
        Shards {
            shards,
            hasher: TraceIdHashBuilder::default(),
        }
    }

    /// Number of shards.
    pub fn count(&self) -> usize {
        self.shards.len()
    }

    /// The shard `trace` belongs to ([`TraceIdHashBuilder::part_of`]).
    pub fn of(&self, trace: &TraceId) -> usize {
        self.hasher.part_of(trace, self.shards.len())
    }

    /// Locks shard `at`.
    pub fn lock(&self, at: usize) -> ShardGuard<'_> {
        let shard = &self.shards[at];
        ShardGuard {
            state: shard.state.lock().unwrap_or_else(|e| e.into_inner()),
            traces: &shard.traces,
        }
    }

    /// Locks the shard of `trace`.
    #[cfg(test)]
    pub fn lock_trace(&self, trace: &TraceId) -> ShardGuard<'_> {
        self.lock(self.of(trace))
    }

    /// `items` split by the shard of their trace (`trace_of`), keeping their order within a
    /// shard; only shards with items are listed, in shard order.
    pub fn partition<T>(
        &self,
        items: impl IntoIterator<Item = T>,
        trace_of: impl Fn(&T) -> &TraceId,
    ) -> Vec<(usize, Vec<T>)> {
        self.group(
            items
                .into_iter()
                .map(|item| (self.of(trace_of(&item)), item)),
        )
    }

    /// `items` tagged with their shard, grouped as [`Shards::partition`] groups them.
    pub fn group<T>(&self, items: impl IntoIterator<Item = (usize, T)>) -> Vec<(usize, Vec<T>)> {
        let items: Vec<(usize, T)> = items.into_iter().collect();
        let mut counts = vec![0usize; self.shards.len()];
        for (at, _) in &items {
            counts[*at] += 1;
        }
        let mut parts: Vec<Vec<T>> = counts.into_iter().map(Vec::with_capacity).collect();
        for (at, item) in items {
            parts[at].push(item);
        }
        parts
            .into_iter()
            .enumerate()
            .filter(|(_, part)| !part.is_empty())
            .collect()
    }

    /// Traces held over all shards, as of each shard's last release.
    pub fn traces(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.traces.load(Ordering::Relaxed))
            .sum()
    }

    /// Heap bytes of every shard's index.
    pub fn memory_bytes(&self) -> usize {
        (0..self.shards.len())
            .map(|at| self.lock(at).index.memory_bytes())
            .sum()
    }

    /// The earliest deadline over all shards.
    pub fn next_deadline(&self) -> Option<u64> {
        (0..self.shards.len())
            .filter_map(|at| self.lock(at).index.next_deadline())
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::buffer::Arrival;
    use crate::policy::TraceStats;

    fn settings(capacity: usize) -> BufferSettings {
        BufferSettings {
            decision_wait_ms: 1_000,
            after_root_ms: None,
            max_age_ms: 60_000,
            capacity,
        }
    }

    #[test]
    fn small_bounds_are_not_split() {
        assert_eq!(shard_count(2, 1_000, 1_000), 1);
        assert_eq!(shard_count(1_000_000, 10, 100_000), 1);
        assert_eq!(shard_count(50_000, 50_000, 0), 12);
        assert_eq!(shard_count(usize::MAX, 1 << 20, 1 << 20), MAX_SHARDS);
        assert_eq!(shard_count(usize::MAX, 0, 0), MAX_SHARDS);
    }

    #[test]
    fn traces_spread_over_the_shards_and_each_stays_in_its_own() {
        let shards = Shards::new(settings(1 << 20), 1 << 20, 1 << 20);
        assert_eq!(shards.count(), MAX_SHARDS);
        let traces: Vec<TraceId> = (0u32..16_000)
            .map(|i| {
                let mut id = [0u8; 16];
                id[12..].copy_from_slice(&i.to_be_bytes());
                id
            })
            .collect();
        let arrival = Arrival {
            stats: TraceStats {
                span_count: 1,
                ..TraceStats::default()
            },
            ..Arrival::default()
        };
        let parts = shards.partition(traces.iter().copied(), |t| t);
        assert_eq!(parts.len(), MAX_SHARDS);
        for (at, part) in &parts {
            // Sequential ids are spread evenly by the keyed hash.
            assert!(part.len() > 600 && part.len() < 1_400, "{}", part.len());
            let mut shard = shards.lock(*at);
            for trace in part {
                assert_eq!(shards.of(trace), *at);
                assert!(
                    shard
                        .index
                        .observe(*trace, &arrival, &[], 0)
                        .evicted
                        .is_none()
                );
            }
        }
        assert_eq!(shards.traces(), traces.len());
        for trace in &traces {
            assert!(shards.lock_trace(trace).index.get(trace).is_some());
        }
        assert_eq!(shards.next_deadline(), Some(1_000));
        assert!(shards.memory_bytes() > 0);
    }

    #[test]
    fn each_shard_holds_its_share_of_the_capacity() {
        let shards = Shards::new(settings(4 * MIN_SHARD_CAPACITY), 0, 0);
        assert_eq!(shards.count(), 4);
        let arrival = Arrival::default();
        let mut evicted = 0;
        for i in 0u32..(5 * MIN_SHARD_CAPACITY as u32) {
            let mut id = [0u8; 16];
            id[..4].copy_from_slice(&i.to_le_bytes());
            evicted += usize::from(
                shards
                    .lock_trace(&id)
                    .index
                    .observe(id, &arrival, &[], u64::from(i))
                    .evicted
                    .is_some(),
            );
        }
        assert_eq!(shards.traces(), 4 * MIN_SHARD_CAPACITY);
        assert_eq!(evicted, MIN_SHARD_CAPACITY);
    }
}
