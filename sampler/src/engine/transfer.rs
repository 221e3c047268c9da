//! Engine operations used only in cluster mode: taking traces out of the buffer to hand
//! them to their new owner (and putting them back when that fails), and adopting
//! decisions handed over by another node.
//!
//! A handoff is atomic the same way [`Engine::finish`] is: a trace leaves the index
//! under its shard's lock with the locations of its buffered items, and only those items
//! are read, sent and — once the new owner acknowledged them — deleted, item by item.
//! Items that arrive for such a trace meanwhile start a fresh index entry; nothing is
//! deleted that was not sent.

use super::*;

/// One buffered item taken for handoff.
#[derive(Debug, Clone)]
pub struct TakenItem {
    /// Where it is buffered (a stored group of several resources is sent as one item per
    /// resource, each naming the same location).
    location: Location,
    /// The encoded `ResourceSpans` or `ResourceLogs` of this trace's items.
    pub payload: Vec<u8>,
}

/// A trace taken out of the index for handoff, with its buffered items.
#[derive(Debug)]
pub struct TakenTrace {
    /// The trace.
    pub trace: TraceId,
    entry: TraceEntry,
    /// Buffered span groups, in arrival order.
    pub spans: Vec<TakenItem>,
    /// Buffered log groups, in arrival order.
    pub logs: Vec<TakenItem>,
}

impl TakenTrace {
    /// The locations of what was sent of it of the parts `acked` names, each once.
    fn sent(&self, acked: Acknowledged) -> Vec<Location> {
        let mut sent: Vec<Location> = Vec::new();
        let parts = [(acked.spans, &self.spans), (acked.logs, &self.logs)];
        for item in parts
            .iter()
            .filter(|(acked, _)| *acked)
            .flat_map(|(_, items)| *items)
        {
            if !sent.contains(&item.location) {
                sent.push(item.location);
            }
        }
        sent
    }

    /// Encoded bytes of everything taken.
    pub fn bytes(&self) -> usize {
        self.spans
            .iter()
            .chain(&self.logs)
            .map(|i| i.payload.len())
            .sum()
    }
}

/// Which parts of a taken trace the new owner acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Acknowledged {
    /// Its spans.
    pub spans: bool,
    /// Its log records.
    pub logs: bool,
}

impl Engine {
    /// Trace ids with buffered data that are in the index (undecided), in id order.
    pub fn held_trace_ids(&self) -> Result<Vec<TraceId>, StorageError> {
        let mut ids: Vec<TraceId> = (0..self.shards.count())
            .flat_map(|at| {
                let shard = self.shards.lock(at);
                shard.index.trace_ids().copied().collect::<Vec<_>>()
            })
            .collect();
        ids.sort_unstable();
        Ok(ids)
    }

    /// Removes `traces` from the index (those still there) and reads their buffered items.
    /// The caller sends them and then calls [`Engine::release_handed_off`] or
    /// [`Engine::restore_handoff`] for each.
    pub fn take_for_handoff(&self, traces: &[TraceId]) -> Result<Vec<TakenTrace>, StorageError> {
        let mut taken: Vec<(TraceId, TraceEntry)> = Vec::with_capacity(traces.len());
        for (at, part) in self.shards.partition(traces, |t| *t) {
            let mut shard = self.shards.lock(at);
            taken.extend(
                part.into_iter()
                    .filter_map(|t| shard.index.remove(t).map(|e| (*t, e))),
            );
        }
        events::active_traces(self.active_traces());
        let mut out = Vec::with_capacity(taken.len());
        let mut failure = None;
        for (trace, entry) in taken {
            if failure.is_some() {
                out.push(TakenTrace {
                    trace,
                    entry,
                    spans: Vec::new(),
                    logs: Vec::new(),
                });
                continue;
            }
            match self.read_items(&entry.items) {
                Ok((spans, logs)) => out.push(TakenTrace {
                    trace,
                    entry,
                    spans,
                    logs,
                }),
                Err(e) => {
                    failure = Some(e);
                    out.push(TakenTrace {
                        trace,
                        entry,
                        spans: Vec::new(),
                        logs: Vec::new(),
                    });
                }
            }
        }
        if let Some(e) = failure {
            self.restore_handoff(
                out,
                Acknowledged {
                    spans: false,
                    logs: false,
                },
            )?;
            return Err(e);
        }
        Ok(out)
    }

    /// Deletes what the new owner acknowledged of `taken`; parts it did not acknowledge
    /// stay buffered and their traces go back into the index (see
    /// [`Engine::restore_handoff`]). Returns how many traces left completely.
    pub fn release_handed_off(
        &self,
        taken: Vec<TakenTrace>,
        acked: Acknowledged,
    ) -> Result<usize, StorageError> {
        let mut forgetting = Forgetting::default();
        for t in &taken {
            forgetting.forget(t.sent(acked));
        }
        self.storage
            .write_forgetting(WriteBatch::default(), forgetting)?;
        let complete = taken
            .iter()
            .filter(|t| (acked.spans || t.spans.is_empty()) && (acked.logs || t.logs.is_empty()))
            .count();
        self.restore_handoff(taken, acked)?;
        Ok(complete)
    }

    /// Puts traces whose handoff did not complete back into the index with what is still
    /// buffered for them (their spans' statistics and policy state unless those were
    /// acknowledged). They get a fresh `decision_wait`, like recovered traces.
    pub fn restore_handoff(
        &self,
        taken: Vec<TakenTrace>,
        acked: Acknowledged,
    ) -> Result<(), StorageError> {
        let now = self.now_ms();
        let mut evicted = Vec::new();
        for (at, part) in self.shards.partition(taken, |t| &t.trace) {
            let mut state = self.shards.lock(at);
            let mut full = Vec::new();
            for t in part {
                let sent = t.sent(acked);
                let left: Vec<Location> = (t.entry.items.iter().copied())
                    .filter(|l| !sent.contains(l))
                    .collect();
                let spans_left =
                    !acked.spans && left.iter().any(|l| l.kind() != BufferedKind::Logs);
                let logs_left = left.iter().any(|l| l.kind() == BufferedKind::Logs);
                if left.is_empty() {
                    continue;
                }
                let arrival = Arrival {
                    stats: if spans_left {
                        t.entry.stats
                    } else {
                        TraceStats::default()
                    },
                    policy: if spans_left {
                        t.entry.policy
                    } else {
                        Default::default()
                    },
                    root: false,
                    logs: logs_left,
                    generation: t.entry.generation,
                };
                full.extend(state.index.observe(t.trace, &arrival, &left, now).evicted);
            }
            evicted.extend(self.decide_locked(&mut state, full));
        }
        events::active_traces(self.active_traces());
        if !evicted.is_empty() {
            events::traces_evicted(evicted.len());
        }
        self.finish_all(&evicted)
    }

    /// Every cached decision of a trace not undecided here again (late spans re-buffered
    /// it): the sampled ones first, as those matter most to the new owner of a trace.
    pub fn cached_decisions(&self) -> Vec<(TraceId, Cached)> {
        let mut sampled = Vec::new();
        let mut not_sampled = Vec::new();
        for at in 0..self.shards.count() {
            let state = self.shards.lock(at);
            for (trace, decision) in state.cache.entries() {
                if state.index.get(&trace).is_some() {
                    continue;
                }
                match decision {
                    Cached::Sampled(_) => sampled.push((trace, decision)),
                    Cached::NotSampled => not_sampled.push((trace, decision)),
                }
            }
        }
        sampled.extend(not_sampled);
        sampled
    }

    /// Records decisions made by another node for traces this node now owns. A trace
    /// that is buffered here (late spans that arrived before the decision did) follows
    /// the decision at once: kept → queued for export, dropped → forgotten. Returns how
    /// many buffered traces were settled that way.
    pub fn adopt_decisions(
        &self,
        decisions: Vec<(TraceId, Cached)>,
    ) -> Result<usize, StorageError> {
        let mut decided = Vec::new();
        for (at, part) in self.shards.partition(decisions, |(t, _)| t) {
            let mut state = self.shards.lock(at);
            for (trace, cached) in part {
                if let Some(entry) = state.index.remove(&trace) {
                    decided.push(Decided {
                        trace,
                        items: entry.items,
                        kept: match &cached {
                            Cached::Sampled(kept) => Some(kept.clone()),
                            Cached::NotSampled => None,
                        },
                        spans: entry.stats.span_count,
                        has_logs: entry.has_logs,
                    });
                }
                state.cache.insert(trace, cached);
            }
        }
        events::active_traces(self.active_traces());
        self.finish_all(&decided)?;
        Ok(decided.len())
    }

    /// Reads the buffered items at `locations`, split by kind.
    fn read_items(
        &self,
        locations: &[Location],
    ) -> Result<(Vec<TakenItem>, Vec<TakenItem>), StorageError> {
        let mut spans = Vec::new();
        let mut logs = Vec::new();
        self.storage
            .visit_trace(locations, |location, kind, payload| {
                let item = |payload: Vec<u8>| TakenItem { location, payload };
                match kind {
                    BufferedKind::Spans => spans.push(item(payload.to_vec())),
                    BufferedKind::Logs => logs.push(item(payload.to_vec())),
                    // Sent as one item per group (the peer takes `ResourceSpans`); a
                    // group that does not decode goes as it is, for the peer to refuse.
                    BufferedKind::TraceSpans => match kind.decode_spans(payload) {
                        Ok(all) => spans.extend(all.iter().map(|rs| item(rs.encode_to_vec()))),
                        Err(_) => spans.push(item(payload.to_vec())),
                    },
                }
            })?;
        Ok((spans, logs))
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::trace::v1::Span;

    use super::*;
    use crate::clock::ManualClock;
    use crate::engine::tests::buffered;

    struct Fixture {
        _dir: tempfile::TempDir,
        engine: Engine,
        clock: Arc<ManualClock>,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let (engine, clock, _) = super::super::tests::engine_in(
            dir.path(),
            "sampler: {decision_wait: 1s, policies: [{name: all, type: always_sample}]}",
        );
        Fixture {
            _dir: dir,
            engine,
            clock,
        }
    }

    fn spans(trace: u8, count: u8) -> ExportTraceServiceRequest {
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                scope_spans: vec![ScopeSpans {
                    spans: (1..=count)
                        .map(|i| Span {
                            trace_id: vec![trace; 16],
                            span_id: vec![i; 8],
                            ..Default::default()
                        })
                        .collect(),
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }

    fn logs(trace: u8) -> ExportLogsServiceRequest {
        ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                scope_logs: vec![ScopeLogs {
                    log_records: vec![opentelemetry_proto::tonic::logs::v1::LogRecord {
                        trace_id: vec![trace; 16],
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }

    #[test]
    fn held_ids_are_the_undecided_buffered_traces() {
        let f = fixture();
        for t in [3u8, 1, 2] {
            f.engine.ingest_traces(spans(t, 2)).unwrap();
        }
        f.engine.ingest_logs(logs(9)).unwrap();
        assert_eq!(
            f.engine.held_trace_ids().unwrap(),
            vec![[1; 16], [2; 16], [3; 16], [9; 16]]
        );
        f.clock.advance(Duration::from_millis(5_000));
        f.engine.decide_due().unwrap();
        assert!(f.engine.held_trace_ids().unwrap().is_empty());
    }

    #[test]
    fn acknowledged_handoff_deletes_exactly_what_was_sent() {
        let f = fixture();
        f.engine.ingest_traces(spans(1, 3)).unwrap();
        f.engine.ingest_logs(logs(1)).unwrap();
        let taken = f.engine.take_for_handoff(&[[1; 16], [7; 16]]).unwrap();
        assert_eq!(taken.len(), 1, "unknown traces are skipped");
        assert_eq!(taken[0].spans.len(), 1);
        assert_eq!(taken[0].logs.len(), 1);
        assert_eq!(f.engine.active_traces(), 0, "taken traces leave the index");
        // A span arriving mid-handoff is not among the taken items: it starts a fresh entry.
        f.engine.ingest_traces(spans(1, 1)).unwrap();
        let done = f
            .engine
            .release_handed_off(
                taken,
                Acknowledged {
                    spans: true,
                    logs: true,
                },
            )
            .unwrap();
        assert_eq!(done, 1);
        let left = buffered(&f.engine, &[1; 16]);
        assert_eq!(left.len(), 1, "only the late span stays buffered");
        assert_eq!(f.engine.active_traces(), 1);
    }

    #[test]
    fn unacknowledged_parts_stay_and_their_trace_returns_to_the_index() {
        let f = fixture();
        f.engine.ingest_traces(spans(4, 2)).unwrap();
        f.engine.ingest_logs(logs(4)).unwrap();
        let taken = f.engine.take_for_handoff(&[[4; 16]]).unwrap();
        let done = f
            .engine
            .release_handed_off(
                taken,
                Acknowledged {
                    spans: false,
                    logs: true,
                },
            )
            .unwrap();
        assert_eq!(done, 0);
        assert_eq!(f.engine.active_traces(), 1);
        let left = buffered(&f.engine, &[4; 16]);
        assert_eq!(
            left.iter().map(|(k, _)| *k).collect::<Vec<_>>(),
            vec![BufferedKind::Spans]
        );
        let taken = f.engine.take_for_handoff(&[[4; 16]]).unwrap();
        assert_eq!(
            taken[0].entry.stats.span_count, 2,
            "statistics survive the round trip"
        );
        f.engine
            .restore_handoff(
                taken,
                Acknowledged {
                    spans: false,
                    logs: false,
                },
            )
            .unwrap();
        assert_eq!(f.engine.held_trace_ids().unwrap(), vec![[4; 16]]);
    }

    #[test]
    fn adopted_decisions_settle_buffered_late_spans_and_guide_later_ones() {
        let f = fixture();
        f.engine.ingest_traces(spans(5, 2)).unwrap();
        let settled = f
            .engine
            .adopt_decisions(vec![
                ([5; 16], Cached::NotSampled),
                ([6; 16], Cached::NotSampled),
            ])
            .unwrap();
        assert_eq!(settled, 1);
        assert_eq!(f.engine.active_traces(), 0);
        assert!(
            buffered(&f.engine, &[5; 16]).is_empty(),
            "dropped trace forgotten"
        );
        f.engine.ingest_traces(spans(6, 1)).unwrap();
        assert_eq!(
            f.engine.active_traces(),
            0,
            "a late span follows the adopted decision"
        );
        let decision_of = |trace: [u8; 16]| {
            f.engine
                .cached_decisions()
                .into_iter()
                .find(|(t, _)| *t == trace)
                .map(|(_, d)| d)
        };
        assert_eq!(decision_of([6; 16]), Some(Cached::NotSampled));
        f.engine.ingest_traces(spans(8, 1)).unwrap();
        assert_eq!(
            decision_of([8; 16]),
            None,
            "undecided traces have no decision"
        );
    }
}
