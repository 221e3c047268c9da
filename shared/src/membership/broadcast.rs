//! Custom broadcasts riding on gossip: foca's [`BroadcastHandler`] over
//! [`pb::ClusterBroadcast`] envelopes.
//!
//! foca re-disseminates an item a bounded number of times and asks the handler whether
//! each received item is new. An item is identified by `(origin, origin_generation,
//! sequence)`; the handler remembers the most recent [`SEEN_CAPACITY`] identifiers and
//! hands each new item received from a peer to the node exactly once.

use std::{
    collections::{HashSet, VecDeque},
    sync::{Arc, mpsc},
};

use bytes::Bytes;
use foca::{BroadcastHandler, Invalidates};
use otel_tail_proto::v1 as pb;
use prost::Message as _;

use super::identity::GossipIdentity;

/// How many broadcast identifiers a node remembers to suppress duplicates. Far more
/// than can be in flight: foca stops disseminating an item after a few rounds.
pub(crate) const SEEN_CAPACITY: usize = 16_384;

/// Identifies one broadcast cluster-wide.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct BroadcastKey {
    origin: Arc<str>,
    generation: u64,
    sequence: u64,
}

impl Invalidates for BroadcastKey {
    /// Items are immutable: an item only replaces another copy of itself.
    fn invalidates(&self, other: &Self) -> bool {
        self == other
    }
}

/// A broadcast received from a peer, ready to hand to the application.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Delivered {
    pub(crate) origin: String,
    pub(crate) payload: Bytes,
}

/// Why a received broadcast item was rejected.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BroadcastError {
    #[error("custom broadcast is not a valid ClusterBroadcast: {0}")]
    Decode(#[from] prost::DecodeError),
    #[error("custom broadcast has no origin or a zero sequence")]
    Invalid,
}

/// foca's handler for our broadcasts; new items from peers go to `deliver`.
pub(crate) struct BroadcastInbox {
    seen: HashSet<BroadcastKey>,
    order: VecDeque<BroadcastKey>,
    deliver: mpsc::Sender<Delivered>,
}

impl BroadcastInbox {
    /// An inbox and the receiving end of its deliveries.
    pub(crate) fn new() -> (Self, mpsc::Receiver<Delivered>) {
        let (deliver, delivered) = mpsc::channel();
        let inbox = Self {
            seen: HashSet::new(),
            order: VecDeque::new(),
            deliver,
        };
        (inbox, delivered)
    }

    fn remember(&mut self, key: BroadcastKey) -> bool {
        if !self.seen.insert(key.clone()) {
            return false;
        }
        self.order.push_back(key);
        if self.order.len() > SEEN_CAPACITY
            && let Some(oldest) = self.order.pop_front()
        {
            self.seen.remove(&oldest);
        }
        true
    }
}

impl BroadcastHandler<GossipIdentity> for BroadcastInbox {
    type Key = BroadcastKey;
    type Error = BroadcastError;

    fn receive_item(
        &mut self,
        data: &[u8],
        sender: Option<&GossipIdentity>,
    ) -> Result<Option<BroadcastKey>, BroadcastError> {
        let item = pb::ClusterBroadcast::decode(data)?;
        if item.origin.is_empty() || item.sequence == 0 {
            return Err(BroadcastError::Invalid);
        }
        let key = BroadcastKey {
            origin: Arc::from(item.origin.as_str()),
            generation: item.origin_generation,
            sequence: item.sequence,
        };
        if !self.remember(key.clone()) {
            return Ok(None);
        }
        // Items we add ourselves (`sender == None`) are disseminated, not delivered.
        if sender.is_some() {
            // The receiver lives as long as the node that owns this inbox.
            let _ = self.deliver.send(Delivered {
                origin: item.origin,
                payload: Bytes::from(item.payload),
            });
        }
        Ok(Some(key))
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;
    use crate::membership::Role;

    fn item(origin: &str, sequence: u64) -> Vec<u8> {
        pb::ClusterBroadcast {
            origin: origin.into(),
            origin_generation: 1,
            sequence,
            payload: format!("{origin}/{sequence}").into_bytes(),
        }
        .encode_to_vec()
    }

    fn peer() -> GossipIdentity {
        GossipIdentity::new(
            Arc::from("p"),
            SocketAddr::from(([127, 0, 0, 1], 1)),
            Role::Sampler,
            1,
        )
    }

    #[test]
    fn new_items_from_peers_are_delivered_once() {
        let (mut inbox, delivered) = BroadcastInbox::new();
        assert!(
            inbox
                .receive_item(&item("a", 1), Some(&peer()))
                .unwrap()
                .is_some()
        );
        assert!(
            inbox
                .receive_item(&item("a", 1), Some(&peer()))
                .unwrap()
                .is_none()
        );
        assert!(
            inbox
                .receive_item(&item("a", 2), Some(&peer()))
                .unwrap()
                .is_some()
        );
        let got: Vec<_> = delivered.try_iter().map(|d| d.payload).collect();
        assert_eq!(
            got,
            vec![Bytes::from_static(b"a/1"), Bytes::from_static(b"a/2")]
        );
    }

    #[test]
    fn own_items_are_disseminated_but_not_delivered() {
        let (mut inbox, delivered) = BroadcastInbox::new();
        assert!(inbox.receive_item(&item("me", 1), None).unwrap().is_some());
        assert!(
            inbox
                .receive_item(&item("me", 1), Some(&peer()))
                .unwrap()
                .is_none()
        );
        assert_eq!(delivered.try_iter().count(), 0);
    }

    #[test]
    fn invalid_items_are_errors() {
        let (mut inbox, _delivered) = BroadcastInbox::new();
        assert!(matches!(
            inbox.receive_item(&[0xff, 0xff], Some(&peer())),
            Err(BroadcastError::Decode(_))
        ));
        assert!(matches!(
            inbox.receive_item(&item("", 1), Some(&peer())),
            Err(BroadcastError::Invalid)
        ));
        assert!(matches!(
            inbox.receive_item(&item("a", 0), Some(&peer())),
            Err(BroadcastError::Invalid)
        ));
    }

    #[test]
    fn the_seen_set_is_bounded() {
        let (mut inbox, _delivered) = BroadcastInbox::new();
        for sequence in 1..=(SEEN_CAPACITY as u64 + 10) {
            inbox
                .receive_item(&item("a", sequence), Some(&peer()))
                .unwrap();
        }
        assert_eq!(inbox.seen.len(), SEEN_CAPACITY);
        assert_eq!(inbox.order.len(), SEEN_CAPACITY);
        // The oldest were forgotten, the newest are still suppressed.
        assert!(
            inbox
                .receive_item(&item("a", 1), Some(&peer()))
                .unwrap()
                .is_some()
        );
        assert!(
            inbox
                .receive_item(&item("a", SEEN_CAPACITY as u64 + 10), Some(&peer()))
                .unwrap()
                .is_none()
        );
    }
}
