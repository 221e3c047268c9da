//! The handoff shell: carries out the plans of `plan.rs` over the network.
//!
//! A pass lists the undecided traces buffered here, plans which belong elsewhere, and
//! per target takes them out of the index in chunks, sends their buffered log groups and
//! then span groups as OTLP requests marked as handoff (built by concatenating the stored
//! protobuf, no decode), and deletes exactly what the owner acknowledged. What was not
//! acknowledged goes back into the index and is retried on the next pass; a trace the
//! owner refuses for good is pinned here and decided locally.
//!
//! Decisions of recently decided traces whose owner changed travel with
//! `otel_tail.v1.Handoff/Decisions`, best effort (the decision cache is best effort too).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use metrics::counter;
use otel_tail_proto::v1::{DecisionBatch, TraceDecision};
use otel_tail_shared::forward::ForwardError;
use otel_tail_shared::otlp::{Signal, TraceId};
use otel_tail_shared::ring::{NodeId, Ring};
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::Cluster;
use super::peer::{Mark, push_field_1};
use super::plan::{Topology, batches_by_bytes, plan_decisions, plan_traces};
use crate::decision::Cached;
use crate::engine::Engine;
use crate::engine::transfer::{Acknowledged, TakenTrace};

/// Traces handed off, by `direction` (`out` = sent and acknowledged, `in` = received).
/// Counter.
pub const HANDOFF_TRACES: &str = "otel_tail_handoff_traces_total";
/// Traces taken out of the index per step.
const TRACES_PER_TAKE: usize = 512;
/// Largest handoff request body.
const MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;
/// Decisions per `Decisions` call.
const DECISIONS_PER_CALL: usize = 4096;
/// Quiet time after a trigger before a pass, so a burst of ring changes settles first.
const SETTLE: Duration = Duration::from_millis(500);
/// Pause before retrying a pass that left traces behind.
const RETRY: Duration = Duration::from_secs(2);
/// Longest background pass; the rest waits for the next one.
const PASS_BUDGET: Duration = Duration::from_secs(20);
/// Deadline of one handoff call. A batch makes at most two (logs, spans), so a pass
/// overruns its deadline by at most twice this.
pub const HANDOFF_TIMEOUT: Duration = Duration::from_secs(3);

/// The result of a pass.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PassReport {
    /// Traces the new owner acknowledged completely.
    pub handed: usize,
    /// Traces planned for handoff that are still here.
    pub left: usize,
}

impl PassReport {
    fn add(&mut self, other: PassReport) {
        self.handed += other.handed;
        self.left += other.left;
    }
}

/// Hands traces and decisions to their owners.
pub struct Handoff {
    engine: Arc<Engine>,
    cluster: Arc<Cluster>,
    /// Set when the background loop stops: its pass starts no new batch.
    stopping: Arc<AtomicBool>,
}

impl Handoff {
    /// A handoff shell over `engine` and `cluster`.
    pub fn new(engine: Arc<Engine>, cluster: Arc<Cluster>) -> Self {
        Handoff {
            engine,
            cluster,
            stopping: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Runs passes when woken (ring change, foreign data buffered) until `stop`: first the
    /// decisions of a ring change, then the traces. Passes that left traces are retried.
    /// On `stop` a pass in progress finishes the batch it is sending and ends.
    pub async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let stopping = self.stopping.clone();
        let mut watch_stop = stop.clone();
        tokio::spawn(async move {
            let _ = watch_stop.wait_for(|s| *s).await;
            stopping.store(true, Ordering::SeqCst);
        });
        let mut last = self.cluster.topology();
        self.engine.set_policy_share(share_of(&last.ring));
        let mut retry = false;
        loop {
            tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                _ = self.cluster.wake.notified() => {}
                _ = tokio::time::sleep(RETRY), if retry => {}
            }
            tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                _ = tokio::time::sleep(SETTLE) => {}
            }
            let topology = self.cluster.topology();
            if topology.ring != last.ring {
                self.engine.set_policy_share(share_of(&topology.ring));
                let sent = self
                    .decisions(&last.ring, &topology, Instant::now() + PASS_BUDGET)
                    .await;
                if sent > 0 {
                    tracing::info!(decisions = sent, "handed off decisions of moved traces");
                }
                last = topology.clone();
            }
            let report = self
                .pass(
                    topology,
                    Instant::now() + PASS_BUDGET,
                    self.stopping.clone(),
                )
                .await;
            if report.handed > 0 || report.left > 0 {
                tracing::info!(
                    handed_off = report.handed,
                    left = report.left,
                    "handoff pass done"
                );
            }
            retry = report.left > 0;
            if *stop.borrow() {
                return;
            }
        }
    }

    /// Hands every undecided trace buffered here that `topology` assigns elsewhere to its
    /// owner, starting no new batch after `deadline`.
    pub async fn traces(&self, topology: Arc<Topology>, deadline: Instant) -> PassReport {
        self.pass(topology, deadline, Arc::new(AtomicBool::new(false)))
            .await
    }

    /// [`Handoff::traces`], also starting no new batch once `abort` is set.
    async fn pass(
        &self,
        topology: Arc<Topology>,
        deadline: Instant,
        abort: Arc<AtomicBool>,
    ) -> PassReport {
        let engine = self.engine.clone();
        let held = match tokio::task::spawn_blocking(move || engine.held_trace_ids()).await {
            Ok(Ok(held)) => held,
            Ok(Err(e)) => {
                tracing::error!(error = %e, "listing buffered traces for handoff failed");
                return PassReport::default();
            }
            Err(e) => {
                tracing::error!(error = %e, "handoff listing task failed");
                return PassReport::default();
            }
        };
        let held = {
            let mut pinned = self
                .cluster
                .pinned
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let held_set: std::collections::HashSet<TraceId> = held.iter().copied().collect();
            pinned.retain(|t| held_set.contains(t));
            held.into_iter()
                .filter(|t| !pinned.contains(t))
                .collect::<Vec<_>>()
        };
        let plan = plan_traces(self.cluster.local(), &topology.ring, held);
        let mut targets = JoinSet::new();
        let mut report = PassReport::default();
        for (node, traces) in plan {
            let Some(addr) = topology.forward.get(&node).copied() else {
                report.left += traces.len();
                continue;
            };
            let engine = self.engine.clone();
            let cluster = self.cluster.clone();
            let until = Until {
                deadline,
                abort: abort.clone(),
            };
            targets.spawn(to_target(engine, cluster, node, addr, traces, until));
        }
        while let Some(done) = targets.join_next().await {
            match done {
                Ok(r) => report.add(r),
                Err(e) => tracing::error!(error = %e, "handoff task failed"),
            }
        }
        report
    }

    /// Sends the cached decisions of traces that moved from `old` to `topology`'s ring
    /// to their new owners (sampled ones first), starting no call after `deadline`;
    /// returns how many were recorded there.
    pub async fn decisions(&self, old: &Ring, topology: &Topology, deadline: Instant) -> usize {
        let engine = self.engine.clone();
        let cached = match tokio::task::spawn_blocking(move || engine.cached_decisions()).await {
            Ok(cached) => cached,
            Err(e) => {
                tracing::error!(error = %e, "collecting decisions failed");
                return 0;
            }
        };
        let plan = plan_decisions(
            self.cluster.local(),
            old,
            &topology.ring,
            cached,
            |(trace, _)| trace,
        );
        let mut sent = 0;
        for (node, planned) in plan {
            let Some(addr) = topology.forward.get(&node).copied() else {
                continue;
            };
            let decisions: Vec<TraceDecision> = planned
                .into_iter()
                .map(|(trace, decision)| to_proto(&trace, decision))
                .collect();
            for chunk in decisions.chunks(DECISIONS_PER_CALL) {
                if Instant::now() >= deadline {
                    return sent;
                }
                let batch = DecisionBatch {
                    origin: self.cluster.local().to_string(),
                    decisions: chunk.to_vec(),
                };
                match self
                    .cluster
                    .peers
                    .decisions(addr, batch, HANDOFF_TIMEOUT)
                    .await
                {
                    Ok(n) => sent += n as usize,
                    Err(e) => {
                        tracing::warn!(target = %node, error = %e, "handing off decisions failed")
                    }
                }
            }
        }
        sent
    }
}

/// When a pass stops starting new batches.
struct Until {
    deadline: Instant,
    abort: Arc<AtomicBool>,
}

impl Until {
    fn reached(&self) -> bool {
        Instant::now() >= self.deadline || self.abort.load(Ordering::SeqCst)
    }
}

/// Hands `traces` to `node` at `addr`, a chunk at a time.
async fn to_target(
    engine: Arc<Engine>,
    cluster: Arc<Cluster>,
    node: NodeId,
    addr: std::net::SocketAddr,
    traces: Vec<TraceId>,
    until: Until,
) -> PassReport {
    let mut report = PassReport::default();
    let mut chunks = traces.chunks(TRACES_PER_TAKE);
    for chunk in chunks.by_ref() {
        if until.reached() {
            report.left += chunk.len();
            break;
        }
        let e = engine.clone();
        let ids = chunk.to_vec();
        let taken = match tokio::task::spawn_blocking(move || e.take_for_handoff(&ids)).await {
            Ok(Ok(taken)) => taken,
            Ok(Err(e)) => {
                tracing::error!(error = %e, "reading traces for handoff failed");
                report.left += chunk.len();
                continue;
            }
            Err(e) => {
                tracing::error!(error = %e, "handoff read task failed");
                report.left += chunk.len();
                continue;
            }
        };
        let sizes: Vec<usize> = taken.iter().map(TakenTrace::bytes).collect();
        let mut rest = taken;
        let mut batches: Vec<Vec<TakenTrace>> = Vec::new();
        for range in batches_by_bytes(&sizes, MAX_BATCH_BYTES).into_iter().rev() {
            batches.push(rest.split_off(range.start));
        }
        while let Some(batch) = batches.pop() {
            if until.reached() {
                let unsent: Vec<TakenTrace> = std::iter::once(batch)
                    .chain(batches.drain(..))
                    .flatten()
                    .collect();
                report.left += unsent.len();
                let e = engine.clone();
                let none = Acknowledged {
                    spans: false,
                    logs: false,
                };
                match tokio::task::spawn_blocking(move || e.restore_handoff(unsent, none)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::error!(error = %e, "restoring unsent traces failed"),
                    Err(e) => tracing::error!(error = %e, "restore task failed"),
                }
                break;
            }
            report.add(send_batch(&engine, &cluster, &node, addr, batch).await);
        }
    }
    for chunk in chunks {
        report.left += chunk.len();
    }
    report
}

/// Sends one batch of taken traces (logs, then spans) and settles it locally.
async fn send_batch(
    engine: &Arc<Engine>,
    cluster: &Cluster,
    node: &NodeId,
    addr: std::net::SocketAddr,
    batch: Vec<TakenTrace>,
) -> PassReport {
    let count = batch.len();
    let logs = body_of(
        batch
            .iter()
            .flat_map(|t| &t.logs)
            .map(|i| i.payload.as_slice()),
    );
    let spans = body_of(
        batch
            .iter()
            .flat_map(|t| &t.spans)
            .map(|i| i.payload.as_slice()),
    );
    let mut refused = false;
    let mut send = async |signal: Signal, body: Option<Bytes>| -> bool {
        let Some(body) = body else { return true };
        match cluster
            .peers
            .send(addr, signal, body, 0, Mark::Handoff, HANDOFF_TIMEOUT)
            .await
        {
            Ok(_) => true,
            Err(ForwardError::Rejected(message)) => {
                tracing::warn!(target = %node, %message, "owner refused handed-off data; deciding it here");
                refused = true;
                false
            }
            Err(error) => {
                tracing::debug!(target = %node, %error, "handoff not acknowledged; will retry");
                false
            }
        }
    };
    let logs_ok = send(Signal::Logs, logs).await;
    let spans_ok = logs_ok && send(Signal::Traces, spans).await;
    if refused {
        let mut pinned = cluster.pinned.lock().unwrap_or_else(|e| e.into_inner());
        pinned.extend(batch.iter().map(|t| t.trace));
    }
    let acked = Acknowledged {
        spans: spans_ok,
        logs: logs_ok,
    };
    let e = engine.clone();
    let handed = match tokio::task::spawn_blocking(move || e.release_handed_off(batch, acked)).await
    {
        Ok(Ok(handed)) => handed,
        Ok(Err(e)) => {
            tracing::error!(error = %e, "settling handed-off traces failed");
            0
        }
        Err(e) => {
            tracing::error!(error = %e, "handoff settle task failed");
            0
        }
    };
    counter!(HANDOFF_TRACES, "direction" => "out").increment(handed as u64);
    PassReport {
        handed,
        left: count - handed,
    }
}

/// An export request body holding `groups` (encoded `Resource*` messages), or `None`
/// when there are none.
fn body_of<'a>(groups: impl Iterator<Item = &'a [u8]>) -> Option<Bytes> {
    let mut body = Vec::new();
    for group in groups {
        push_field_1(&mut body, group);
    }
    (!body.is_empty()).then(|| Bytes::from(body))
}

fn to_proto(trace: &TraceId, decision: Cached) -> TraceDecision {
    match decision {
        Cached::Sampled(kept) => TraceDecision {
            trace_id: trace.to_vec(),
            sampled: true,
            policy: kept.policy.to_string(),
            probability: kept.probability,
            correlate: kept.correlate,
        },
        Cached::NotSampled => TraceDecision {
            trace_id: trace.to_vec(),
            sampled: false,
            policy: String::new(),
            probability: None,
            correlate: false,
        },
    }
}

/// This node's share of the traffic on `ring` (it is a member): what dynamic throughput
/// goals are scaled by.
fn share_of(ring: &Ring) -> f64 {
    1.0 / ring.len().max(1) as f64
}
