//! Gossip self-metrics: packet counters (kept in atomics too, so a handle can report
//! them and tests can assert on them without a metrics recorder) and the per-role
//! member gauge.

use std::sync::atomic::{AtomicU64, Ordering};

use super::{Role, datagram::PacketError, names};

/// Counts of gossip datagrams one node sent and received, by outcome.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PacketCounts {
    /// Received, authenticated and decoded.
    pub received_ok: u64,
    /// Received and dropped: failed authentication.
    pub received_auth_failed: u64,
    /// Received and dropped: not a valid datagram or gossip message.
    pub received_malformed: u64,
    /// Received and dropped: authentic but replayed or outside the time window.
    pub received_replayed: u64,
    /// Handed to the socket.
    pub sent_ok: u64,
    /// The socket refused to send.
    pub sent_error: u64,
}

/// Live counters behind [`PacketCounts`].
#[derive(Debug, Default)]
pub(crate) struct PacketStats {
    received_ok: AtomicU64,
    received_auth_failed: AtomicU64,
    received_malformed: AtomicU64,
    received_replayed: AtomicU64,
    sent_ok: AtomicU64,
    sent_error: AtomicU64,
}

impl PacketStats {
    /// Records one received datagram and how it fared.
    pub(crate) fn received(&self, outcome: Result<(), &PacketError>) {
        let (counter, label) = match outcome {
            Ok(()) => (&self.received_ok, names::OUTCOME_OK),
            Err(PacketError::AuthFailed) => {
                (&self.received_auth_failed, names::OUTCOME_AUTH_FAILED)
            }
            Err(PacketError::Malformed(_)) => (&self.received_malformed, names::OUTCOME_MALFORMED),
            Err(PacketError::Replayed) => (&self.received_replayed, names::OUTCOME_REPLAYED),
        };
        counter.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(names::GOSSIP_PACKETS_TOTAL, "kind" => names::KIND_RECEIVED, "outcome" => label)
            .increment(1);
    }

    /// Records one datagram handed (or not) to the socket.
    pub(crate) fn sent(&self, ok: bool) {
        let (counter, label) = if ok {
            (&self.sent_ok, names::OUTCOME_OK)
        } else {
            (&self.sent_error, names::OUTCOME_ERROR)
        };
        counter.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(names::GOSSIP_PACKETS_TOTAL, "kind" => names::KIND_SENT, "outcome" => label)
            .increment(1);
    }

    /// A snapshot of the counters.
    pub(crate) fn snapshot(&self) -> PacketCounts {
        PacketCounts {
            received_ok: self.received_ok.load(Ordering::Relaxed),
            received_auth_failed: self.received_auth_failed.load(Ordering::Relaxed),
            received_malformed: self.received_malformed.load(Ordering::Relaxed),
            received_replayed: self.received_replayed.load(Ordering::Relaxed),
            sent_ok: self.sent_ok.load(Ordering::Relaxed),
            sent_error: self.sent_error.load(Ordering::Relaxed),
        }
    }
}

/// Publishes how many live members (this node included) have each role.
pub(crate) fn record_members(roles: impl Iterator<Item = Role>) {
    let mut routers = 0u32;
    let mut samplers = 0u32;
    for role in roles {
        match role {
            Role::Router => routers += 1,
            Role::Sampler => samplers += 1,
        }
    }
    metrics::gauge!(names::RING_MEMBERS, "role" => Role::Router.as_str()).set(routers);
    metrics::gauge!(names::RING_MEMBERS, "role" => Role::Sampler.as_str()).set(samplers);
}
