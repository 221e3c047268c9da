//! Trace completeness across a cluster: what a sender knows it sent (and which of it
//! was acknowledged) against what the samplers exported, attributed per sampler.
//!
//! A kept trace is complete when one sampler exported every span sent for it, each
//! once. The figures a scale test reports:
//! - `completeness`: spans of kept traces exported by the trace's main exporter (the
//!   sampler that exported most of its spans) / spans sent for kept traces;
//! - `duplicates`: exported copies of kept spans beyond the first;
//! - `lost_acknowledged_spans`: acknowledged spans of kept traces nobody exported;
//! - `split_traces`: kept traces exported by more than one sampler;
//! - `leaked_spans`: exported spans of traces sent but not to be kept, and exported
//!   spans of kept traces that were never sent.
//!
//! Exported traces the ledger does not know are ignored: several senders (or
//! successive phases of a test) may share one sink, each assessing its own traffic.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;

/// A 16-byte trace id.
pub type TraceKey = [u8; 16];
/// An 8-byte span id.
pub type SpanKey = [u8; 8];

/// What was sent for one trace.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SentTrace {
    /// Whether the policy is to keep this trace.
    pub kept: bool,
    /// Every span id sent, with whether a request carrying it was acknowledged.
    pub spans: BTreeMap<SpanKey, bool>,
}

/// The sender's record: every span sent, by trace.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ledger {
    traces: BTreeMap<TraceKey, SentTrace>,
}

impl Ledger {
    /// Records that span `span` of trace `trace` was sent (not yet acknowledged).
    /// Malformed ids are ignored: the cluster refuses them and nobody could export them.
    pub fn sent(&mut self, trace: &[u8], span: &[u8], kept: bool) {
        let (Ok(trace), Ok(span)) = (TraceKey::try_from(trace), SpanKey::try_from(span)) else {
            return;
        };
        let entry = self.traces.entry(trace).or_default();
        entry.kept |= kept;
        entry.spans.entry(span).or_insert(false);
    }

    /// Records that a request carrying span `span` of trace `trace` was acknowledged.
    pub fn acknowledged(&mut self, trace: &[u8], span: &[u8]) {
        let (Ok(trace), Ok(span)) = (TraceKey::try_from(trace), SpanKey::try_from(span)) else {
            return;
        };
        if let Some(acked) = self
            .traces
            .get_mut(&trace)
            .and_then(|t| t.spans.get_mut(&span))
        {
            *acked = true;
        }
    }

    /// Appends everything in `other`.
    pub fn merge(&mut self, other: Ledger) {
        for (trace, sent) in other.traces {
            let entry = self.traces.entry(trace).or_default();
            entry.kept |= sent.kept;
            for (span, acked) in sent.spans {
                *entry.spans.entry(span).or_insert(false) |= acked;
            }
        }
    }

    /// The traces recorded.
    pub fn traces(&self) -> &BTreeMap<TraceKey, SentTrace> {
        &self.traces
    }

    /// Number of spans sent.
    pub fn span_count(&self) -> usize {
        self.traces.values().map(|t| t.spans.len()).sum()
    }

    /// Number of spans acknowledged.
    pub fn acknowledged_count(&self) -> usize {
        self.traces
            .values()
            .flat_map(|t| t.spans.values())
            .filter(|a| **a)
            .count()
    }
}

/// Exported spans by trace: every copy with the sampler that exported it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Exports {
    traces: BTreeMap<TraceKey, Vec<(String, SpanKey)>>,
    /// Exported spans whose ids were not 16/8 bytes.
    malformed: usize,
}

impl Exports {
    /// Indexes export requests tagged with their source (see
    /// [`crate::sink::OtlpSink::trace_requests_by_source`]).
    pub fn from_requests<'a>(
        requests: impl IntoIterator<Item = (&'a str, &'a ExportTraceServiceRequest)>,
    ) -> Self {
        let mut exports = Exports::default();
        for (source, request) in requests {
            for span in request
                .resource_spans
                .iter()
                .flat_map(|rs| &rs.scope_spans)
                .flat_map(|ss| &ss.spans)
            {
                match (
                    TraceKey::try_from(span.trace_id.as_slice()),
                    SpanKey::try_from(span.span_id.as_slice()),
                ) {
                    (Ok(trace), Ok(id)) => exports
                        .traces
                        .entry(trace)
                        .or_default()
                        .push((source.to_string(), id)),
                    _ => exports.malformed += 1,
                }
            }
        }
        exports
    }

    /// The samplers that exported spans of `trace`.
    pub fn sources_of(&self, trace: &TraceKey) -> BTreeSet<&str> {
        self.traces
            .get(trace)
            .map(|copies| copies.iter().map(|(s, _)| s.as_str()).collect())
            .unwrap_or_default()
    }
}

/// How completely the kept traces came out; see the module docs.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Completeness {
    /// Kept traces sent.
    pub kept_traces: usize,
    /// Spans sent for kept traces.
    pub kept_spans_sent: usize,
    /// Of those, exported by their trace's main exporter.
    pub kept_spans_complete: usize,
    /// Extra exported copies of kept spans.
    pub duplicates: usize,
    /// Acknowledged spans of kept traces that nobody exported.
    pub lost_acknowledged_spans: usize,
    /// Kept traces exported by more than one sampler.
    pub split_traces: usize,
    /// Kept traces of which nothing was exported.
    pub missing_traces: usize,
    /// Exported spans of sent traces not to be kept, of kept traces but never sent, or
    /// with malformed ids.
    pub leaked_spans: usize,
}

impl Completeness {
    /// Compares what was sent with what was exported.
    pub fn assess(sent: &Ledger, exported: &Exports) -> Self {
        let mut c = Completeness {
            leaked_spans: exported.malformed,
            ..Completeness::default()
        };
        for (trace, copies) in &exported.traces {
            if sent.traces.get(trace).is_some_and(|t| !t.kept) {
                c.leaked_spans += copies.len();
            }
        }
        for (trace, sent_trace) in sent.traces.iter().filter(|(_, t)| t.kept) {
            c.kept_traces += 1;
            c.kept_spans_sent += sent_trace.spans.len();
            let copies = exported
                .traces
                .get(trace)
                .map(Vec::as_slice)
                .unwrap_or_default();
            if copies.is_empty() {
                c.missing_traces += 1;
            }
            let mut by_source: BTreeMap<&str, BTreeSet<SpanKey>> = BTreeMap::new();
            for (source, span) in copies {
                if sent_trace.spans.contains_key(span) {
                    by_source.entry(source).or_default().insert(*span);
                } else {
                    c.leaked_spans += 1;
                }
            }
            if by_source.len() > 1 {
                c.split_traces += 1;
            }
            c.kept_spans_complete += by_source.values().map(BTreeSet::len).max().unwrap_or(0);
            let distinct: BTreeSet<SpanKey> = copies.iter().map(|(_, s)| *s).collect();
            c.duplicates += copies.len() - distinct.len();
            c.lost_acknowledged_spans += sent_trace
                .spans
                .iter()
                .filter(|(span, acked)| **acked && !distinct.contains(*span))
                .count();
        }
        c
    }

    /// Spans of kept traces exported in their one trace / spans sent for them (1 when
    /// nothing was to be kept).
    pub fn ratio(&self) -> f64 {
        if self.kept_spans_sent == 0 {
            1.0
        } else {
            self.kept_spans_complete as f64 / self.kept_spans_sent as f64
        }
    }

    /// The report line of a scale event: `scale-event=<name> kept_traces=N
    /// completeness=0.xxxx duplicates=N lost_acknowledged_spans=N` followed by the
    /// supporting counts.
    pub fn report_line(&self, event: &str) -> String {
        format!("scale-event={event} {self}")
    }
}

impl fmt::Display for Completeness {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "kept_traces={} completeness={:.4} duplicates={} lost_acknowledged_spans={} \
             kept_spans_sent={} split_traces={} missing_traces={} leaked_spans={}",
            self.kept_traces,
            self.ratio(),
            self.duplicates,
            self.lost_acknowledged_spans,
            self.kept_spans_sent,
            self.split_traces,
            self.missing_traces,
            self.leaked_spans,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};

    fn trace(n: u8) -> Vec<u8> {
        vec![n; 16]
    }

    fn span(n: u8) -> Vec<u8> {
        vec![n; 8]
    }

    fn request(spans: &[(u8, u8)]) -> ExportTraceServiceRequest {
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                scope_spans: vec![ScopeSpans {
                    spans: spans
                        .iter()
                        .map(|(t, s)| Span {
                            trace_id: trace(*t),
                            span_id: span(*s),
                            ..Default::default()
                        })
                        .collect(),
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }

    fn ledger() -> Ledger {
        let mut ledger = Ledger::default();
        for s in 1..=4 {
            ledger.sent(&trace(1), &span(s), true);
            ledger.acknowledged(&trace(1), &span(s));
        }
        for s in 1..=2 {
            ledger.sent(&trace(2), &span(10 + s), true);
            ledger.acknowledged(&trace(2), &span(10 + s));
        }
        ledger.sent(&trace(3), &span(20), false);
        ledger.acknowledged(&trace(3), &span(20));
        // Sent but never acknowledged (the request failed).
        ledger.sent(&trace(2), &span(13), true);
        ledger
    }

    #[test]
    fn whole_traces_from_one_sampler_are_complete() {
        let a = request(&[(1, 1), (1, 2), (1, 3), (1, 4)]);
        let b = request(&[(2, 11), (2, 12), (2, 13)]);
        let exports = Exports::from_requests([("s-0", &a), ("s-1", &b)]);
        let c = Completeness::assess(&ledger(), &exports);
        assert_eq!(c.kept_traces, 2);
        assert_eq!(c.kept_spans_sent, 7);
        assert_eq!(c.kept_spans_complete, 7);
        assert_eq!(c.ratio(), 1.0);
        assert_eq!(
            (c.duplicates, c.lost_acknowledged_spans, c.split_traces),
            (0, 0, 0)
        );
        assert_eq!((c.missing_traces, c.leaked_spans), (0, 0));
        assert_eq!(exports.sources_of(&[1; 16]), BTreeSet::from(["s-0"]));
    }

    #[test]
    fn split_duplicated_lost_and_leaked_spans_are_counted() {
        // Trace 1 split between two samplers, one span twice; trace 2 lost an acked
        // span (12) and an unacked one (13); trace 3 was to be dropped but leaked;
        // trace 9 is someone else's traffic.
        let a = request(&[(1, 1), (1, 2), (1, 2), (2, 11), (3, 20), (9, 90)]);
        let b = request(&[(1, 3), (1, 4), (1, 4)]);
        let exports = Exports::from_requests([("s-0", &a), ("s-1", &b)]);
        let c = Completeness::assess(&ledger(), &exports);
        assert_eq!(c.kept_spans_sent, 7);
        // Trace 1: main exporter has 2 of 4; trace 2: 1 of 3.
        assert_eq!(c.kept_spans_complete, 3);
        assert!((c.ratio() - 3.0 / 7.0).abs() < 1e-9);
        assert_eq!(c.duplicates, 2);
        assert_eq!(c.lost_acknowledged_spans, 1);
        assert_eq!(c.split_traces, 1);
        assert_eq!(c.leaked_spans, 1);
        assert_eq!(c.missing_traces, 0);
        let line = c.report_line("add-2");
        assert!(
            line.starts_with(
                "scale-event=add-2 kept_traces=2 completeness=0.4286 duplicates=2 lost_acknowledged_spans=1"
            ),
            "{line}"
        );
    }

    #[test]
    fn nothing_exported_means_every_acknowledged_kept_span_is_lost() {
        let c = Completeness::assess(&ledger(), &Exports::default());
        assert_eq!(c.missing_traces, 2);
        assert_eq!(c.lost_acknowledged_spans, 6);
        assert_eq!(c.ratio(), 0.0);
        let mut merged = Ledger::default();
        merged.merge(ledger());
        assert_eq!(merged.span_count(), 8);
        assert_eq!(merged.acknowledged_count(), 7);
    }
}
