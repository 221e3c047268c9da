//! The sans-I/O membership node: foca plus our codec, sealing, timers and view.
//!
//! Everything here is driven by the caller with the current time passed in: feed it
//! datagrams ([`Node::handle_datagram`]), fire its due timers in deadline order
//! ([`Node::handle_due_timers`]), and take what it wants sent ([`Node::take_outgoing`])
//! and what changed ([`Node::take_events`]). The async shell does this with a socket
//! and one scheduler loop; the tests do it with an in-memory network and a fake clock.
//!
//! **The view.** foca tracks member *slots* keyed by gossip address. The view exposed
//! to the program is keyed by node id instead and keeps, per node id, the live identity
//! with the highest generation. A node restarted on a new address therefore replaces
//! its previous self as soon as it is seen, and the old slot's eventual "down" is not
//! reported, because it no longer stands for the node. Events are the changes of that
//! view: `MemberUp` when a node id appears or its identity changes (address,
//! generation), `MemberDown` when it disappears.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{Arc, mpsc},
    time::Instant,
};

use foca::{AccumulatingRuntime, Foca, OwnedNotification, Timer};
use otel_tail_proto::v1 as pb;
use prost::Message as _;
use rand::rngs::StdRng;

use super::{
    Error, MAX_BROADCAST_PAYLOAD, MembershipEvent, NodeIdentity,
    broadcast::{BroadcastInbox, Delivered},
    codec::{self, ProtoCodec},
    datagram::{PacketError, Sealer},
    identity::GossipIdentity,
    stats::{self, PacketStats},
};

/// One datagram to send.
#[derive(Debug, Clone)]
pub(crate) struct Outgoing {
    /// Destination gossip address.
    pub(crate) to: SocketAddr,
    /// The (possibly sealed) encoded [`pb::Datagram`].
    pub(crate) datagram: Vec<u8>,
}

type GossipFoca = Foca<GossipIdentity, ProtoCodec, StdRng, BroadcastInbox>;

/// A membership node without I/O. See the module docs.
pub(crate) struct Node {
    foca: GossipFoca,
    runtime: AccumulatingRuntime<GossipIdentity>,
    /// Pending foca timers by (deadline, insertion order): fired strictly in this order.
    timers: BTreeMap<(Instant, u64), Timer<GossipIdentity>>,
    next_timer_seq: u64,
    sealer: Sealer,
    delivered: mpsc::Receiver<Delivered>,
    view: BTreeMap<Arc<str>, GossipIdentity>,
    outbox: Vec<Outgoing>,
    events: Vec<MembershipEvent>,
    stats: Arc<PacketStats>,
    joined: bool,
    broadcast_sequence: u64,
}

impl Node {
    /// A node that is alone until it announces itself or is announced to.
    pub(crate) fn new(
        identity: GossipIdentity,
        config: foca::Config,
        rng: StdRng,
        secret: Option<&[u8]>,
        stats: Arc<PacketStats>,
    ) -> Self {
        let (inbox, delivered) = BroadcastInbox::new();
        let node = Self {
            foca: Foca::with_custom_broadcast(identity, config, rng, ProtoCodec, inbox),
            runtime: AccumulatingRuntime::new(),
            timers: BTreeMap::new(),
            next_timer_seq: 0,
            sealer: Sealer::new(secret),
            delivered,
            view: BTreeMap::new(),
            outbox: Vec::new(),
            events: Vec::new(),
            stats,
            joined: false,
            broadcast_sequence: 0,
        };
        node.publish_gauges();
        node
    }

    /// Our current identity (its generation moves on if the cluster declared us down).
    pub(crate) fn local(&self) -> NodeIdentity {
        self.foca
            .identity()
            .to_public()
            .expect("a node's own identity is never a seed placeholder")
    }

    /// Whether at least one other member knows us.
    pub(crate) fn is_joined(&self) -> bool {
        self.joined
    }

    /// Live members by node id, this node included, sorted by node id.
    pub(crate) fn members(&self) -> Vec<NodeIdentity> {
        let mut members: Vec<NodeIdentity> = self
            .view
            .values()
            .filter_map(GossipIdentity::to_public)
            .chain(std::iter::once(self.local()))
            .collect();
        members.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        members
    }

    /// Gossip addresses of the live members foca knows (any generation).
    pub(crate) fn member_addresses(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.foca.iter_members().map(|member| member.id().address())
    }

    /// Asks the node at `seed` to let us in. Our own address is skipped.
    pub(crate) fn announce(&mut self, seed: SocketAddr, now: Instant) {
        if seed == self.foca.identity().address() {
            return;
        }
        if let Err(error) = self
            .foca
            .announce(GossipIdentity::seed(seed), &mut self.runtime)
        {
            tracing::debug!(%seed, %error, "could not announce to seed");
        }
        self.settle(now);
    }

    /// Handles one received datagram. A dropped datagram is counted and its reason
    /// returned; nothing else happens.
    pub(crate) fn handle_datagram(
        &mut self,
        datagram: &[u8],
        now: Instant,
    ) -> Result<(), PacketError> {
        let result = self.apply_datagram(datagram);
        self.stats.received(result.as_ref().map(|_| ()));
        self.settle(now);
        result
    }

    fn apply_datagram(&mut self, datagram: &[u8]) -> Result<(), PacketError> {
        let packet = self.sealer.open(datagram, unix_ms())?;
        let frame =
            codec::packet_to_frame(&packet).map_err(|e| PacketError::Malformed(e.to_string()))?;
        match self.foca.handle_data(&frame, &mut self.runtime) {
            Ok(()) => Ok(()),
            Err(
                error @ (foca::Error::Decode(_)
                | foca::Error::MalformedPacket
                | foca::Error::DataTooBig
                | foca::Error::CustomBroadcast(_)),
            ) => Err(PacketError::Malformed(error.to_string())),
            // Authentic and well-formed, but not actionable now (a stale probe reply,
            // a packet from our own previous incarnation, ...): SWIM tolerates these.
            Err(error) => {
                tracing::debug!(%error, "gossip message ignored");
                Ok(())
            }
        }
    }

    /// When the next timer is due, if any.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.timers.keys().next().map(|(deadline, _)| *deadline)
    }

    /// Fires every timer due at `now`, earliest first, including timers that firing
    /// schedules for `now` or earlier.
    pub(crate) fn handle_due_timers(&mut self, now: Instant) {
        while let Some(entry) = self.timers.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let timer = entry.remove();
            if let Err(error) = self.foca.handle_timer(timer, &mut self.runtime) {
                tracing::debug!(%error, "gossip timer had no effect");
            }
            self.settle(now);
        }
    }

    /// Disseminates `payload` to every member (each delivers it once).
    pub(crate) fn broadcast(&mut self, payload: &[u8], now: Instant) -> Result<(), Error> {
        if payload.len() > MAX_BROADCAST_PAYLOAD {
            return Err(Error::BroadcastTooLarge {
                len: payload.len(),
                max: MAX_BROADCAST_PAYLOAD,
            });
        }
        self.broadcast_sequence += 1;
        let local = self.foca.identity();
        let item = pb::ClusterBroadcast {
            origin: local.node_id().to_string(),
            origin_generation: local.generation(),
            sequence: self.broadcast_sequence,
            payload: payload.to_vec(),
        }
        .encode_to_vec();
        self.foca
            .add_broadcast(&item)
            .map_err(|e| Error::Broadcast(e.to_string()))?;
        // Push it out now rather than at the next gossip round.
        if let Err(error) = self.foca.broadcast(&mut self.runtime) {
            tracing::debug!(%error, "could not send broadcast right away");
        }
        self.settle(now);
        Ok(())
    }

    /// Tells the cluster we are leaving. The node stays silent afterwards.
    pub(crate) fn leave(&mut self, now: Instant) {
        if let Err(error) = self.foca.leave_cluster(&mut self.runtime) {
            tracing::warn!(%error, "could not announce leaving the cluster");
        }
        self.settle(now);
        self.timers.clear();
    }

    /// Datagrams to send, oldest first.
    pub(crate) fn take_outgoing(&mut self) -> Vec<Outgoing> {
        std::mem::take(&mut self.outbox)
    }

    /// View changes and delivered broadcasts, oldest first.
    pub(crate) fn take_events(&mut self) -> Vec<MembershipEvent> {
        std::mem::take(&mut self.events)
    }

    /// Drains what foca asked for during the last call.
    fn settle(&mut self, now: Instant) {
        while let Some((to, frame)) = self.runtime.to_send() {
            match codec::frame_to_packet(&frame) {
                Ok(packet) => self.outbox.push(Outgoing {
                    to: to.address(),
                    datagram: self.sealer.seal(&packet, unix_ms()),
                }),
                Err(error) => tracing::warn!(%error, to = %to.address(), "could not encode gossip"),
            }
        }
        while let Some((after, timer)) = self.runtime.to_schedule() {
            self.timers
                .insert((now + after, self.next_timer_seq), timer);
            self.next_timer_seq += 1;
        }
        let mut membership_changed = false;
        while let Some(notification) = self.runtime.to_notify() {
            match notification {
                OwnedNotification::Active => self.joined = true,
                OwnedNotification::Idle | OwnedNotification::Defunct => self.joined = false,
                OwnedNotification::Rejoin(id) => {
                    tracing::info!(
                        generation = id.generation(),
                        "declared down by the cluster; rejoined with a new generation"
                    );
                }
                OwnedNotification::MemberUp(_)
                | OwnedNotification::MemberDown(_)
                | OwnedNotification::Rename(_, _) => membership_changed = true,
            }
        }
        if membership_changed {
            self.refresh_view();
        }
        for delivered in self.delivered.try_iter() {
            self.events.push(MembershipEvent::Broadcast {
                origin: delivered.origin,
                payload: delivered.payload,
            });
        }
    }

    /// Recomputes the per-node-id view from foca's live members and records changes.
    fn refresh_view(&mut self) {
        let local = self.foca.identity().node_id().clone();
        let mut next: BTreeMap<Arc<str>, GossipIdentity> = BTreeMap::new();
        for member in self.foca.iter_members() {
            let id = member.id();
            if id.is_seed() || *id.node_id() == local {
                continue;
            }
            match next.get(id.node_id()) {
                Some(kept) if kept.generation() >= id.generation() => {}
                _ => {
                    next.insert(id.node_id().clone(), id.clone());
                }
            }
        }
        for (node_id, old) in &self.view {
            if !next.contains_key(node_id)
                && let Some(old) = old.to_public()
            {
                self.events.push(MembershipEvent::MemberDown(old));
            }
        }
        for (node_id, new) in &next {
            if self.view.get(node_id) != Some(new)
                && let Some(new) = new.to_public()
            {
                self.events.push(MembershipEvent::MemberUp(new));
            }
        }
        self.view = next;
        self.publish_gauges();
    }

    fn publish_gauges(&self) {
        let local = self.foca.identity().role();
        stats::record_members(
            self.view
                .values()
                .filter_map(GossipIdentity::role)
                .chain(local),
        );
    }
}

/// The wall clock in unix milliseconds: the time sealed datagrams carry and are checked
/// against.
fn unix_ms() -> u64 {
    crate::otlp::unix_now() / 1_000_000
}
