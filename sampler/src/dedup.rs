//! Exactly-once spans of kept traces: a kept trace leaves with each span id once.
//!
//! A client that retries a request whose first attempt was partly accepted (a router
//! forwarded some parts before a timeout), or an SDK retrying after a lost response,
//! sends spans the sampler already holds. Within a buffered trace those repeats are
//! removed when the trace is exported; for spans arriving after the trace was kept (the
//! late path), the span ids of recently kept traces are remembered, bounded: at most
//! `traces` traces (least recently kept forgotten first) and `spans_per_trace` ids each.
//! A repeat beyond those bounds, or after a restart, is exported again — at least once
//! stays the floor, exactly once is what fits in the bound. Pure logic: no I/O, no clock.

use std::num::NonZeroUsize;

use lru::LruCache;
use opentelemetry_proto::tonic::trace::v1::ResourceSpans;
use otel_tail_shared::otlp::TraceId;

/// Span ids already exported, per recently kept trace.
pub struct SpanDedup {
    recent: LruCache<TraceId, Vec<u64>>,
    spans_per_trace: usize,
}

impl SpanDedup {
    /// Remembers up to `spans_per_trace` span ids of each of the last `traces` kept traces.
    pub fn new(traces: usize, spans_per_trace: usize) -> SpanDedup {
        SpanDedup {
            recent: LruCache::new(NonZeroUsize::new(traces).unwrap_or(NonZeroUsize::MIN)),
            spans_per_trace,
        }
    }

    /// Removes from `rs` (spans of `trace` only) every span whose id was exported for
    /// `trace` already or repeats one earlier in `rs`, and remembers the others as
    /// exported. Returns how many spans were removed.
    pub fn keep_first(&mut self, trace: &TraceId, rs: &mut ResourceSpans) -> u64 {
        let limit = self.spans_per_trace;
        let seen = self.recent.get_or_insert_mut(*trace, Vec::new);
        let mut removed = 0u64;
        for ss in &mut rs.scope_spans {
            ss.spans.retain(|span| {
                let id = span_key(&span.span_id);
                if seen.contains(&id) {
                    removed += 1;
                    return false;
                }
                if seen.len() < limit {
                    seen.push(id);
                }
                true
            });
        }
        rs.scope_spans.retain(|ss| !ss.spans.is_empty());
        removed
    }

    /// Remembers `ids` (span ids of `trace`, in export order) as [`SpanDedup::keep_first`]
    /// would when none of them is a repeat, and says so; when one is, remembers nothing
    /// and returns `false` (the caller then removes the repeats with `keep_first`).
    pub fn first_time<'a>(
        &mut self,
        trace: &TraceId,
        ids: impl IntoIterator<Item = &'a [u8]>,
    ) -> bool {
        let limit = self.spans_per_trace;
        let seen = self.recent.get_or_insert_mut(*trace, Vec::new);
        let before = seen.len();
        for id in ids {
            let id = span_key(id);
            if seen.contains(&id) {
                seen.truncate(before);
                return false;
            }
            if seen.len() < limit {
                seen.push(id);
            }
        }
        true
    }

    /// Forgets everything remembered for `trace` (its first export did not happen).
    pub fn forget_trace(&mut self, trace: &TraceId) {
        self.recent.pop(trace);
    }

    /// Forgets the span ids of `rs` for `trace` again: their export did not happen (the
    /// write failed), so a retry of them is not a repeat.
    pub fn forget(&mut self, trace: &TraceId, rs: &ResourceSpans) {
        if let Some(seen) = self.recent.peek_mut(trace) {
            for span in rs.scope_spans.iter().flat_map(|ss| &ss.spans) {
                let id = span_key(&span.span_id);
                seen.retain(|s| *s != id);
            }
        }
    }
}

/// A span id as a number (ids are 8 bytes once validated by the receivers; shorter or
/// longer ones fold into a number all the same).
fn span_key(id: &[u8]) -> u64 {
    let mut word = [0u8; 8];
    for (i, b) in id.iter().enumerate() {
        word[i % 8] ^= b;
    }
    u64::from_le_bytes(word)
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::trace::v1::{ScopeSpans, Span};

    use super::*;

    fn group(ids: &[u8]) -> ResourceSpans {
        ResourceSpans {
            scope_spans: vec![ScopeSpans {
                spans: ids
                    .iter()
                    .map(|i| Span {
                        span_id: vec![*i; 8],
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn ids(rs: &ResourceSpans) -> Vec<u8> {
        rs.scope_spans
            .iter()
            .flat_map(|ss| &ss.spans)
            .map(|s| s.span_id[0])
            .collect()
    }

    #[test]
    fn repeats_within_and_across_groups_of_a_trace_are_removed() {
        let mut dedup = SpanDedup::new(10, 100);
        let trace = [1; 16];
        let mut first = group(&[1, 2, 2, 3]);
        assert_eq!(dedup.keep_first(&trace, &mut first), 1);
        assert_eq!(ids(&first), vec![1, 2, 3]);
        let mut retry = group(&[3, 4, 1]);
        assert_eq!(dedup.keep_first(&trace, &mut retry), 2);
        assert_eq!(ids(&retry), vec![4]);
        let mut all_seen = group(&[4]);
        assert_eq!(dedup.keep_first(&trace, &mut all_seen), 1);
        assert!(all_seen.scope_spans.is_empty(), "empty scopes are dropped");
        let mut other = group(&[1]);
        assert_eq!(dedup.keep_first(&[2; 16], &mut other), 0, "per trace");
    }

    #[test]
    fn memory_is_bounded_per_trace_and_in_traces() {
        let mut dedup = SpanDedup::new(2, 2);
        let mut g = group(&[1, 2, 3]);
        dedup.keep_first(&[1; 16], &mut g);
        let mut again = group(&[1, 2, 3]);
        assert_eq!(
            dedup.keep_first(&[1; 16], &mut again),
            2,
            "only two ids remembered for the trace"
        );
        dedup.keep_first(&[2; 16], &mut group(&[1]));
        dedup.keep_first(&[3; 16], &mut group(&[1]));
        let mut forgotten = group(&[1]);
        assert_eq!(
            dedup.keep_first(&[1; 16], &mut forgotten),
            0,
            "the least recently kept trace was forgotten"
        );
    }

    #[test]
    fn spans_whose_export_failed_are_not_repeats() {
        let mut dedup = SpanDedup::new(10, 100);
        let mut g = group(&[1, 2]);
        dedup.keep_first(&[1; 16], &mut g);
        dedup.forget(&[1; 16], &g);
        let mut retry = group(&[1, 2]);
        assert_eq!(dedup.keep_first(&[1; 16], &mut retry), 0);
    }

    #[test]
    fn first_time_remembers_new_ids_as_keep_first_does_and_nothing_on_a_repeat() {
        let mut dedup = SpanDedup::new(10, 3);
        let trace = [1; 16];
        let id = |n: u8| vec![n; 8];
        let (one, two, three, four) = (id(1), id(2), id(3), id(4));
        assert!(dedup.first_time(&trace, [&one[..], &two[..]]));
        assert!(
            !dedup.first_time(&trace, [&three[..], &three[..]]),
            "a repeat within the ids"
        );
        assert!(
            !dedup.first_time(&trace, [&four[..], &one[..]]),
            "a repeat of an exported id"
        );
        // Nothing of the refused calls was remembered: 3 and 4 are still new, and only
        // three ids are remembered per trace, as with keep_first.
        assert!(dedup.first_time(&trace, [&three[..], &four[..]]));
        let mut again = group(&[1, 2, 3, 4]);
        assert_eq!(dedup.keep_first(&trace, &mut again), 3);
        assert_eq!(ids(&again), vec![4]);
    }
}
