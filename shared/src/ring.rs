//! Consistent-hash ring over sampler nodes, with virtual nodes.
//!
//! Every router and sampler builds a [`Ring`] from the same membership view and must
//! then agree, without talking, on which sampler owns a trace id or a routing key. When a
//! sampler joins or leaves, only the keys whose arc changes hands move (about `1/n` of
//! them on a join), so handoff stays proportional to the change.
//!
//! # Why our own ring over xxh3 rather than the `hashring` crate
//!
//! `hashring` 0.3 was the first candidate. It falls short here on four counts:
//! - it has no virtual nodes; adding `(node, i)` replicas ourselves is most of the work
//!   of a ring anyway;
//! - its points come from `std::hash::Hash` fed into SipHash, so a point depends on how
//!   Rust's `Hash` impls frame a value (length prefixes, `0xff` terminators), which the
//!   standard library does not promise to keep across releases. Routers and samplers built
//!   at different times must place every node at the same points;
//! - two points with the same hash are ordered by insertion, so the owner of a key could
//!   depend on the order in which gossip delivered the members;
//! - SipHash of a 16-byte trace id costs several times xxh3's on the router's hot path.
//!
//! This ring places virtual node `i` of node `n` at `xxh3_64(n ‖ i as 4 LE bytes)` and a key at
//! `xxh3_64(key)`: a specified, stable, fast hash that needs no `Hash` framing. Points are
//! kept in a sorted vector; ties between equal points are broken by node id, so the ring
//! depends only on the set of members, never on the order they were added. A lookup is one
//! xxh3 and one binary search.

use std::fmt;
use std::sync::Arc;

use xxhash_rust::xxh3::xxh3_64;

use crate::otlp::TraceId;

#[cfg(test)]
mod tests;

/// Default number of virtual nodes per member.
///
/// A node's share of the keys deviates from fair by about `1/sqrt(vnodes)` (one standard
/// deviation): 512 points keep that near 4.4%, so with 10 samplers the most loaded one
/// stays within about 10% of fair (128 points: 25% measured). The ring stays small: 10
/// nodes are 5,120 hashes, 40 KB, searched in 13 steps.
pub const DEFAULT_VNODES: u32 = 512;

/// Identity of a ring member: the sampler's node id (its stable name, e.g. the
/// StatefulSet pod name), not its address, so a restarted pod at a new IP keeps its arc.
///
/// Cheap to clone (a shared string) because routers hand it to forwarders per request.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId(Arc<str>);

impl NodeId {
    /// Wraps a node name.
    pub fn new(name: impl Into<Arc<str>>) -> Self {
        NodeId(name.into())
    }

    /// The node name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for NodeId {
    fn from(name: &str) -> Self {
        NodeId::new(name)
    }
}

impl From<String> for NodeId {
    fn from(name: String) -> Self {
        NodeId::new(name)
    }
}

/// A consistent-hash ring: members sorted by id, each placed at `vnodes` points.
///
/// Membership changes rebuild the point table (rare: on gossip events); lookups are
/// allocation-free and take `&self`, so a ring can be shared behind an `Arc` and swapped
/// whole when membership changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ring {
    /// Virtual nodes per member.
    vnodes: u32,
    /// Members, sorted and unique; `Point::member` indexes into it.
    members: Vec<NodeId>,
    /// Hashes of all points, sorted (ties: by member). Kept apart from `owners` so the
    /// binary search touches 8 bytes per point.
    points: Vec<u64>,
    /// `owners[i]`: index in `members` of the member at `points[i]`.
    owners: Vec<u32>,
    /// [`Ring::digest`].
    digest: u64,
}

impl Default for Ring {
    fn default() -> Self {
        Ring::new(DEFAULT_VNODES)
    }
}

impl Ring {
    /// An empty ring whose members will each get `vnodes` points (at least 1).
    pub fn new(vnodes: u32) -> Self {
        Ring {
            vnodes: vnodes.max(1),
            members: Vec::new(),
            points: Vec::new(),
            owners: Vec::new(),
            digest: 0,
        }
        .rebuilt()
    }

    fn rebuilt(mut self) -> Self {
        self.rebuild();
        self
    }

    /// A ring with the given members (duplicates are ignored).
    pub fn with_members(vnodes: u32, members: impl IntoIterator<Item = NodeId>) -> Self {
        let mut ring = Ring::new(vnodes);
        ring.members.extend(members);
        ring.members.sort();
        ring.members.dedup();
        ring.rebuild();
        ring
    }

    /// Adds a member; returns false if it was already there.
    pub fn add(&mut self, node: NodeId) -> bool {
        match self.members.binary_search(&node) {
            Ok(_) => false,
            Err(at) => {
                self.members.insert(at, node);
                self.rebuild();
                true
            }
        }
    }

    /// Removes a member; returns false if it was not there.
    pub fn remove(&mut self, node: &NodeId) -> bool {
        match self.members.binary_search(node) {
            Ok(at) => {
                self.members.remove(at);
                self.rebuild();
                true
            }
            Err(_) => false,
        }
    }

    /// Whether `node` is a member.
    pub fn contains(&self, node: &NodeId) -> bool {
        self.members.binary_search(node).is_ok()
    }

    /// The members, sorted by id. Indexes returned by the `*_index` lookups point here.
    pub fn members(&self) -> &[NodeId] {
        &self.members
    }

    /// Number of members.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether the ring has no members (every lookup then returns `None`).
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Virtual nodes per member.
    pub fn vnodes(&self) -> u32 {
        self.vnodes
    }

    /// A fingerprint of the members and virtual nodes: two rings with the same digest
    /// place every key on the same member. A router sends it with each part it forwards
    /// ([`crate::forward::RING_HEADER`]), so a sampler whose ring has the same digest knows
    /// the part is all its own without splitting it again.
    pub fn digest(&self) -> u64 {
        self.digest
    }

    /// The member that owns a trace.
    pub fn owner_of_trace(&self, trace_id: &TraceId) -> Option<&NodeId> {
        self.owner_index_of_trace(trace_id)
            .map(|i| &self.members[i])
    }

    /// The member that owns a routing key (resource identity, metric series identity).
    pub fn owner_of_key(&self, key: &[u8]) -> Option<&NodeId> {
        self.owner_index_of_key(key).map(|i| &self.members[i])
    }

    /// Index in [`Ring::members`] of the member that owns a trace; what the request
    /// splitter's owner function returns.
    pub fn owner_index_of_trace(&self, trace_id: &TraceId) -> Option<usize> {
        self.owner_index_of_hash(xxh3_64(trace_id))
    }

    /// Index in [`Ring::members`] of the member that owns a routing key.
    pub fn owner_index_of_key(&self, key: &[u8]) -> Option<usize> {
        self.owner_index_of_hash(xxh3_64(key))
    }

    /// The first point at or after `hash`, wrapping around.
    fn owner_index_of_hash(&self, hash: u64) -> Option<usize> {
        if self.points.is_empty() {
            return None;
        }
        let at = self.points.partition_point(|&p| p < hash);
        let at = if at == self.points.len() { 0 } else { at };
        Some(self.owners[at] as usize)
    }

    fn rebuild(&mut self) {
        let mut points: Vec<(u64, u32)> =
            Vec::with_capacity(self.members.len() * self.vnodes as usize);
        for (member, node) in self.members.iter().enumerate() {
            let name = node.as_str().as_bytes();
            let member = u32::try_from(member).expect("fewer than 2^32 ring members");
            // The index goes into the hashed bytes, not the seed: for short inputs xxh3 only
            // XORs the seed in, so seeded points of ids differing in one bit would nearly
            // coincide and one node would win almost every tie.
            let mut input = Vec::with_capacity(name.len() + 4);
            for i in 0..self.vnodes {
                input.clear();
                input.extend_from_slice(name);
                input.extend_from_slice(&i.to_le_bytes());
                points.push((xxh3_64(&input), member));
            }
        }
        // Members are sorted by id, so ordering ties by member index orders them by id.
        points.sort_unstable();
        self.points = points.iter().map(|&(hash, _)| hash).collect();
        self.owners = points.iter().map(|&(_, member)| member).collect();
        let mut identity = self.vnodes.to_le_bytes().to_vec();
        for node in &self.members {
            let name = node.as_str().as_bytes();
            identity.extend_from_slice(&(name.len() as u64).to_le_bytes());
            identity.extend_from_slice(name);
        }
        self.digest = xxh3_64(&identity);
    }
}

/// Whether a trace changes owner between two membership views: the handoff test a
/// sampler applies to each buffered trace when the ring changes.
pub fn moved_between(old: &Ring, new: &Ring, trace_id: &TraceId) -> bool {
    old.owner_of_trace(trace_id) != new.owner_of_trace(trace_id)
}
