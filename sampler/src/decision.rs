//! The decision cache: recent decisions by trace id, so spans and logs that arrive after
//! their trace was decided follow the same decision. Two bounded LRU maps, as in the
//! Collector (`decision_cache.sampled_cache_size` / `non_sampled_cache_size`).

use std::num::NonZeroUsize;
use std::sync::Arc;

use lru::LruCache;
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

type IdLru<V> = LruCache<TraceId, V, TraceIdHashBuilder>;

/// Bounded memory of recent decisions.
pub struct DecisionCache {
    sampled: Option<IdLru<Kept>>,
    not_sampled: Option<IdLru<()>>,
    /// Decisions inserted so far.
    version: u64,
}

impl DecisionCache {
    /// Caches of the given sizes; a size of 0 disables that cache.
    pub fn new(sampled: usize, not_sampled: usize) -> Self {
        DecisionCache {
            sampled: bounded_lru(sampled),
            not_sampled: bounded_lru(not_sampled),
            version: 0,
        }
    }

    /// Moves with every [`DecisionCache::insert`], the only way a decision gets in: a trace
    /// not found while the version stays the same is not found again, so a caller that
    /// looked it up already can skip the second lookup.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Remembers a decision.
    pub fn insert(&mut self, trace: TraceId, decision: Cached) {
        self.version += 1;
        match decision {
            Cached::Sampled(kept) => {
                if let Some(c) = &mut self.not_sampled {
                    c.pop(&trace);
                }
                if let Some(c) = &mut self.sampled {
                    c.put(trace, kept);
                }
            }
            Cached::NotSampled => {
                if let Some(c) = &mut self.sampled {
                    c.pop(&trace);
                }
                if let Some(c) = &mut self.not_sampled {
                    c.put(trace, ());
                }
            }
        }
    }

    /// Every remembered decision: the sampled ones, then the others, each most recent
    /// first.
    pub fn entries(&self) -> impl Iterator<Item = (TraceId, Cached)> + '_ {
        let sampled = self
            .sampled
            .iter()
            .flat_map(|c| c.iter())
            .map(|(trace, kept)| (*trace, Cached::Sampled(kept.clone())));
        let not_sampled = self
            .not_sampled
            .iter()
            .flat_map(|c| c.iter())
            .map(|(trace, ())| (*trace, Cached::NotSampled));
        sampled.chain(not_sampled)
    }

    /// The remembered decision for `trace`, if any.
    pub fn get(&mut self, trace: &TraceId) -> Option<Cached> {
        if let Some(kept) = self.sampled.as_mut().and_then(|c| c.get(trace)) {
            return Some(Cached::Sampled(kept.clone()));
        }
        self.not_sampled
            .as_mut()
            .and_then(|c| c.get(trace))
            .map(|_| Cached::NotSampled)
    }
}

fn bounded_lru<V>(size: usize) -> Option<IdLru<V>> {
    NonZeroUsize::new(size).map(|n| LruCache::with_hasher(n, Default::default()))
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
            "least recently used entry evicted"
        );
        cache.insert([5; 16], Cached::NotSampled);
        assert_eq!(cache.get(&[2; 16]), None);
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
