//! The router's core: split an encoded request by the ring, forward each part to its
//! owner concurrently, and acknowledge only once every owner accepted.
//!
//! Outcome of a request, from its parts' outcomes:
//! - every part accepted → `Ok`, with items refused by owners (partial success) and items
//!   with invalid trace ids (never forwarded) reported as rejected;
//! - an owner refused its part for good (`INVALID_ARGUMENT`) → those items are reported
//!   as rejected through partial success; the rest was accepted;
//! - an owner throttled → [`IngestError::Overloaded`] with the longest delay asked for,
//!   so the client backs off and retries;
//! - an owner could not be reached → its part is retried once against the owners the
//!   ring names *now* (a failed sampler may just have left, and its arc moved); if that
//!   fails too → [`IngestError::Unavailable`].
//!
//! A retried request is forwarded whole again, so owners that had accepted their part
//! receive it twice: at-least-once delivery, as OTLP clients retrying after any failure
//! already imply. Samplers must tolerate duplicate spans.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::join_all;
use otel_tail_shared::forward::{CallMeta, ForwardError, Forwarder};
use otel_tail_shared::otlp::Signal;
use otel_tail_shared::receiver::raw::RawIngest;
use otel_tail_shared::receiver::{Accepted, IngestError, Reads};
use otel_tail_shared::ring::{NodeId, Ring};
use otel_tail_shared::split::{RouteKey, Split, SplitError, Splitter};
use otel_tail_shared::telemetry::names;

/// What a client is told when no sampler is known yet.
pub const NO_SAMPLERS: &str = "no sampler is in the cluster ring yet (the router has not joined or every sampler is down); retry later";

/// The ring of live samplers and where each accepts forwarded data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutingTable {
    ring: Ring,
    /// `targets[i]`: forward address of `ring.members()[i]`.
    targets: Vec<SocketAddr>,
}

impl RoutingTable {
    /// A table of `members` (node id and forward address; for a repeated id the last
    /// address wins), each with `vnodes` points on the ring.
    pub fn new(vnodes: u32, members: impl IntoIterator<Item = (NodeId, SocketAddr)>) -> Self {
        let by_id: BTreeMap<NodeId, SocketAddr> = members.into_iter().collect();
        let ring = Ring::with_members(vnodes, by_id.keys().cloned());
        let targets = ring.members().iter().map(|id| by_id[id]).collect();
        RoutingTable { ring, targets }
    }

    /// The ring.
    pub fn ring(&self) -> &Ring {
        &self.ring
    }

    /// Forward addresses, in ring member order.
    pub fn targets(&self) -> &[SocketAddr] {
        &self.targets
    }

    /// Whether no sampler is known.
    pub fn is_empty(&self) -> bool {
        self.ring.is_empty()
    }

    /// Splits an encoded request of `signal` among the members.
    fn split(&self, signal: Signal, body: &[u8]) -> Result<Split, SplitError> {
        thread_local! {
            static SPLITTER: RefCell<Splitter> = RefCell::new(Splitter::new());
        }
        let ring = &self.ring;
        // The ring is not empty here, so every lookup finds an owner.
        let owner = |key: RouteKey<'_>| {
            match key {
                RouteKey::Trace(trace_id) => ring.owner_index_of_trace(&trace_id),
                RouteKey::Key(key) => ring.owner_index_of_key(key),
            }
            .unwrap_or(0)
        };
        SPLITTER.with_borrow_mut(|splitter| match signal {
            Signal::Traces => splitter.wire_traces_by_owner(body, ring.len(), owner),
            Signal::Logs => splitter.wire_logs_by_owner(body, ring.len(), owner),
            Signal::Metrics => splitter.wire_metrics_by_owner(body, ring.len(), owner),
        })
    }
}

/// Splits requests by the current [`RoutingTable`] and forwards the parts. Implements
/// [`RawIngest`], so the raw receivers deliver straight to it.
#[derive(Debug)]
pub struct Router {
    forwarder: Arc<Forwarder>,
    table: RwLock<Arc<RoutingTable>>,
}

impl Router {
    /// A router forwarding through `forwarder` by `table`.
    pub fn new(forwarder: Arc<Forwarder>, table: RoutingTable) -> Self {
        Router {
            forwarder,
            table: RwLock::new(Arc::new(table)),
        }
    }

    /// The forwarder parts are sent with.
    pub fn forwarder(&self) -> &Arc<Forwarder> {
        &self.forwarder
    }

    /// Replaces the routing table (on a membership change). Requests in flight finish
    /// with the table they started with, apart from retries.
    pub fn set_table(&self, table: RoutingTable) {
        *self.table.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(table);
    }

    /// The current routing table.
    pub fn table(&self) -> Arc<RoutingTable> {
        self.table.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Routes one encoded `Export*ServiceRequest` of `signal`; see the module docs for
    /// the outcome.
    pub async fn route(&self, signal: Signal, body: Bytes) -> Result<Accepted, IngestError> {
        let table = self.table();
        if table.is_empty() {
            return Err(IngestError::unavailable_msg(NO_SAMPLERS));
        }
        let split = table
            .split(signal, &body)
            .map_err(|error| IngestError::Invalid(error.to_string()))?;
        let mut outcome = Outcome::default();
        outcome.invalid(signal, split.invalid);
        let sends = parts(&split).map(|(owner, part, count)| {
            self.forward_with_retry(&table, signal, owner, part, count)
        });
        for part in join_all(sends).await {
            outcome.merge(part);
        }
        outcome.finish(signal)
    }

    /// Forwards one part to its owner; if the owner is unreachable, once more to the
    /// owners the current table names for its items.
    async fn forward_with_retry(
        &self,
        table: &Arc<RoutingTable>,
        signal: Signal,
        owner: usize,
        part: Bytes,
        count: usize,
    ) -> Outcome {
        let target = table.targets[owner];
        let first = self
            .forwarder
            .send_with(target, signal, part.clone(), count, split_by(table))
            .await;
        let Err(ForwardError::Unavailable(reason)) = first else {
            return Outcome::of(first, count);
        };
        tracing::debug!(%target, %reason, "owner unreachable; retrying against the current ring");
        let current = self.table();
        if current.is_empty() {
            return Outcome::of(Err(ForwardError::Unavailable(reason)), count);
        }
        if Arc::ptr_eq(&current, table) {
            let retried = self
                .forwarder
                .send_with(target, signal, part, count, split_by(table))
                .await;
            return Outcome::of(retried, count);
        }
        // The ring changed: the part's items may now belong to several owners.
        let split = match current.split(signal, &part) {
            Ok(split) => split,
            Err(error) => {
                return Outcome::of(Err(ForwardError::Rejected(error.to_string())), count);
            }
        };
        let sends = parts(&split).map(|(owner, part, count)| {
            let forwarder = &self.forwarder;
            let target = current.targets[owner];
            let meta = split_by(&current);
            async move {
                Outcome::of(
                    forwarder.send_with(target, signal, part, count, meta).await,
                    count,
                )
            }
        });
        let mut outcome = Outcome::default();
        for part in join_all(sends).await {
            outcome.merge(part);
        }
        outcome
    }
}

/// What a part split by `table` is sent with: the ring's digest, so an owner with the same
/// ring buffers it without splitting it again.
fn split_by(table: &RoutingTable) -> CallMeta {
    CallMeta {
        ring: Some(table.ring.digest()),
        ..CallMeta::default()
    }
}

/// The non-empty parts of a split: owner index, bytes, item count.
fn parts(split: &Split) -> impl Iterator<Item = (usize, Bytes, usize)> + '_ {
    split
        .parts
        .iter()
        .zip(&split.counts)
        .enumerate()
        .filter(|(_, (_, count))| **count > 0)
        .map(|(owner, (part, count))| (owner, part.clone(), *count))
}

impl RawIngest for Router {
    async fn traces(&self, body: Bytes) -> Result<Accepted, IngestError> {
        self.route(Signal::Traces, body).await
    }

    async fn logs(&self, body: Bytes) -> Result<Accepted, IngestError> {
        self.route(Signal::Logs, body).await
    }

    async fn metrics(&self, body: Bytes) -> Result<Accepted, IngestError> {
        self.route(Signal::Metrics, body).await
    }

    /// The router splits requests without decoding them.
    fn reads(&self, _signal: Signal) -> Reads {
        Reads::Passes
    }
}

/// What happened to the parts of one request so far.
#[derive(Debug, Default)]
struct Outcome {
    /// Items owners accepted.
    forwarded: u64,
    /// Items refused individually (invalid ids, owners' refusals).
    accepted: Accepted,
    /// The longest delay an owner asked for, if any throttled.
    throttled: Option<Duration>,
    /// Why owners could not be reached.
    unavailable: Vec<String>,
}

impl Outcome {
    /// The outcome of forwarding one part of `count` items.
    fn of(result: Result<Accepted, ForwardError>, count: usize) -> Outcome {
        let mut outcome = Outcome::default();
        let count = count as u64;
        match result {
            Ok(accepted) => {
                outcome.forwarded =
                    count - u64::try_from(accepted.rejected).unwrap_or(0).min(count);
                outcome.accepted = accepted;
            }
            Err(ForwardError::Throttled { retry_after }) => outcome.throttled = Some(retry_after),
            Err(ForwardError::Rejected(reason)) => {
                outcome.accepted = Accepted {
                    rejected: i64::try_from(count).unwrap_or(i64::MAX),
                    message: format!("{count} item(s) refused by their sampler: {reason}"),
                };
            }
            Err(ForwardError::Unavailable(reason)) => outcome.unavailable.push(reason),
        }
        outcome
    }

    /// Records `invalid` items the split left out for their malformed trace id.
    fn invalid(&mut self, signal: Signal, invalid: usize) {
        if invalid == 0 {
            return;
        }
        let what = match signal {
            Signal::Traces => "span(s) with an all-zero or non-16-byte trace_id",
            Signal::Logs => "log record(s) with a trace_id that is not 16 bytes",
            Signal::Metrics => "data point(s) that could not be routed",
        };
        self.accepted.merge(Accepted {
            rejected: i64::try_from(invalid).unwrap_or(i64::MAX),
            message: format!("{invalid} {what}"),
        });
        metrics::counter!(names::ITEMS_REJECTED, "signal" => signal.as_str(), "reason" => "invalid_id")
            .increment(invalid as u64);
        if signal == Signal::Traces {
            metrics::counter!(names::SPANS_REJECTED, "reason" => "invalid_id")
                .increment(invalid as u64);
        }
    }

    fn merge(&mut self, other: Outcome) {
        self.forwarded += other.forwarded;
        self.accepted.merge(other.accepted);
        self.throttled = self.throttled.max(other.throttled);
        self.unavailable.extend(other.unavailable);
    }

    /// The answer to the client.
    fn finish(self, signal: Signal) -> Result<Accepted, IngestError> {
        if let Some(retry_after) = self.throttled {
            return Err(IngestError::Overloaded {
                retry_after,
                reason: "a sampler is overloaded",
            });
        }
        if !self.unavailable.is_empty() {
            return Err(IngestError::unavailable_msg(format!(
                "cannot reach the owning sampler(s): {}",
                self.unavailable.join("; ")
            )));
        }
        let received = match signal {
            Signal::Traces => names::SPANS_RECEIVED,
            Signal::Logs => names::LOGS_RECEIVED,
            Signal::Metrics => names::DATA_POINTS_RECEIVED,
        };
        metrics::counter!(received).increment(self.forwarded);
        Ok(self.accepted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn table_pairs_each_member_with_its_address_and_last_address_wins() {
        let table = RoutingTable::new(
            16,
            [
                (NodeId::from("s-1"), addr(2)),
                (NodeId::from("s-0"), addr(1)),
                (NodeId::from("s-1"), addr(3)),
            ],
        );
        assert_eq!(
            table.ring().members(),
            &[NodeId::from("s-0"), NodeId::from("s-1")]
        );
        assert_eq!(table.targets(), &[addr(1), addr(3)]);
    }

    #[test]
    fn outcome_prefers_throttling_then_unavailability() {
        let mut outcome = Outcome::of(Ok(Accepted::default()), 5);
        outcome.merge(Outcome::of(
            Err(ForwardError::Unavailable("down".into())),
            2,
        ));
        outcome.merge(Outcome::of(
            Err(ForwardError::Throttled {
                retry_after: Duration::from_secs(2),
            }),
            1,
        ));
        outcome.merge(Outcome::of(
            Err(ForwardError::Throttled {
                retry_after: Duration::from_secs(5),
            }),
            1,
        ));
        assert!(matches!(
            outcome.finish(Signal::Traces),
            Err(IngestError::Overloaded { retry_after, .. }) if retry_after == Duration::from_secs(5)
        ));

        let mut outcome = Outcome::of(Ok(Accepted::default()), 5);
        outcome.merge(Outcome::of(
            Err(ForwardError::Unavailable("s-1 down".into())),
            2,
        ));
        assert!(matches!(
            outcome.finish(Signal::Logs),
            Err(IngestError::Unavailable { context: m, .. }) if m.contains("s-1 down")
        ));
    }

    #[test]
    fn rejections_and_invalid_ids_become_partial_success() {
        let mut outcome = Outcome::default();
        outcome.invalid(Signal::Traces, 2);
        outcome.merge(Outcome::of(
            Ok(Accepted {
                rejected: 1,
                message: "bad".into(),
            }),
            4,
        ));
        outcome.merge(Outcome::of(
            Err(ForwardError::Rejected("garbled".into())),
            3,
        ));
        assert_eq!(outcome.forwarded, 3);
        let accepted = outcome.finish(Signal::Traces).unwrap();
        assert_eq!(accepted.rejected, 6);
        assert!(
            accepted.message.contains("2 span(s)"),
            "{}",
            accepted.message
        );
        assert!(accepted.message.contains("bad"), "{}", accepted.message);
        assert!(accepted.message.contains("garbled"), "{}", accepted.message);
    }
}
