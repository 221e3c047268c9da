//! Pure planning for cluster mode: the ring built from a membership view, and which
//! traces and decisions go to which node when it changes. No I/O; the shell in
//! `handoff.rs` carries the plans out.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;

use otel_tail_shared::membership::{NodeIdentity, Role};
use otel_tail_shared::otlp::TraceId;
use otel_tail_shared::ring::{NodeId, Ring};
use otel_tail_shared::split::RouteKey;

/// The ring and where each of its members accepts forwarded data.
#[derive(Debug, Clone)]
pub struct Topology {
    /// Live samplers.
    pub ring: Ring,
    /// Forward endpoint of each ring member.
    pub forward: HashMap<NodeId, SocketAddr>,
}

impl Topology {
    /// The topology of live samplers in `members`. `local` (with forward address
    /// `local_forward`) is included when `include_local`, whatever the view says, and left
    /// out otherwise (a leaving node plans with the ring its peers will use).
    pub fn from_members(
        vnodes: u32,
        members: &[NodeIdentity],
        local: &NodeId,
        local_forward: SocketAddr,
        include_local: bool,
    ) -> Topology {
        let mut forward: HashMap<NodeId, SocketAddr> = members
            .iter()
            .filter(|m| m.role == Role::Sampler && m.node_id != local.as_str())
            .map(|m| (NodeId::from(m.node_id.as_str()), m.forward_addr()))
            .collect();
        if include_local {
            forward.insert(local.clone(), local_forward);
        }
        Topology {
            ring: Ring::with_members(vnodes, forward.keys().cloned()),
            forward,
        }
    }

    /// Index of `node` in the ring's members.
    pub fn index_of(&self, node: &NodeId) -> Option<usize> {
        self.ring.members().binary_search(node).ok()
    }

    /// Ring member index owning `key` (`None` on an empty ring).
    pub fn owner_index(&self, key: RouteKey<'_>) -> Option<usize> {
        match key {
            RouteKey::Trace(trace) => self.ring.owner_index_of_trace(&trace),
            RouteKey::Key(key) => self.ring.owner_index_of_key(key),
        }
    }
}

/// Which buffered traces `local` must hand to whom: every trace it holds whose owner on
/// `ring` is another node, grouped by that node (ids in input order).
///
/// The old ring is deliberately not consulted: a node may hold traces it did not own
/// before either (data accepted while views disagreed, a forward that fell back to local
/// buffering, traces recovered from disk after a restart), and they all belong with the
/// current owner. For traces the node did own, this is exactly the set for which
/// [`otel_tail_shared::ring::moved_between`] holds. An empty ring plans nothing.
pub fn plan_traces(
    local: &NodeId,
    ring: &Ring,
    traces: impl IntoIterator<Item = TraceId>,
) -> BTreeMap<NodeId, Vec<TraceId>> {
    let mut plan: BTreeMap<NodeId, Vec<TraceId>> = BTreeMap::new();
    for trace in traces {
        if let Some(owner) = ring.owner_of_trace(&trace)
            && owner != local
        {
            plan.entry(owner.clone()).or_default().push(trace);
        }
    }
    plan
}

/// Which decisions (`items`, each of the trace `trace_of` names) `local` must send on a
/// ring change from `old` to `new`: those whose owner changed to a node other than
/// `local` (the new owner has not seen the decision; an unchanged owner already has it or
/// never needed it).
pub fn plan_decisions<T>(
    local: &NodeId,
    old: &Ring,
    new: &Ring,
    items: impl IntoIterator<Item = T>,
    trace_of: impl Fn(&T) -> &TraceId,
) -> BTreeMap<NodeId, Vec<T>> {
    let mut plan: BTreeMap<NodeId, Vec<T>> = BTreeMap::new();
    for item in items {
        let trace = trace_of(&item);
        let Some(owner) = new.owner_of_trace(trace) else {
            continue;
        };
        if owner != local && old.owner_of_trace(trace) != Some(owner) {
            plan.entry(owner.clone()).or_default().push(item);
        }
    }
    plan
}

/// Splits items of the given encoded sizes into consecutive groups of at most
/// `max_bytes` each (an item larger than that forms a group of its own); returns the
/// group boundaries as index ranges.
pub fn batches_by_bytes(sizes: &[usize], max_bytes: usize) -> Vec<std::ops::Range<usize>> {
    let mut batches = Vec::new();
    let mut start = 0;
    let mut bytes = 0usize;
    for (i, &size) in sizes.iter().enumerate() {
        if i > start && bytes + size > max_bytes {
            batches.push(start..i);
            start = i;
            bytes = 0;
        }
        bytes += size;
    }
    if start < sizes.len() {
        batches.push(start..sizes.len());
    }
    batches
}

#[cfg(test)]
mod tests {
    use otel_tail_shared::ring::moved_between;

    use super::*;

    fn ring(names: &[&str]) -> Ring {
        Ring::with_members(64, names.iter().map(|n| NodeId::from(*n)))
    }

    fn traces(n: u32) -> Vec<TraceId> {
        (1..=n)
            .map(|i| {
                let mut id = [0u8; 16];
                id[..4].copy_from_slice(&i.to_be_bytes());
                id[15] = 1;
                id
            })
            .collect()
    }

    #[test]
    fn a_join_hands_exactly_the_moved_traces_to_the_new_node() {
        let a = NodeId::from("a");
        let old = ring(&["a", "b"]);
        let new = ring(&["a", "b", "c"]);
        let held: Vec<TraceId> = traces(3000)
            .into_iter()
            .filter(|t| old.owner_of_trace(t) == Some(&a))
            .collect();
        let plan = plan_traces(&a, &new, held.clone());
        assert_eq!(
            plan.keys().collect::<Vec<_>>(),
            vec![&NodeId::from("c")],
            "only the new node gains"
        );
        let expected: Vec<TraceId> = held
            .iter()
            .copied()
            .filter(|t| moved_between(&old, &new, t))
            .collect();
        assert_eq!(plan[&NodeId::from("c")], expected);
        let share = expected.len() as f64 / held.len() as f64;
        assert!(
            (0.2..0.5).contains(&share),
            "about a third of a's traces move to c, got {share}"
        );
    }

    #[test]
    fn a_leaving_node_hands_everything_to_the_remaining_owners() {
        let b = NodeId::from("b");
        let without_b = ring(&["a", "c"]);
        let held = traces(500);
        let plan = plan_traces(&b, &without_b, held.clone());
        let mut planned: Vec<TraceId> = plan.values().flatten().copied().collect();
        planned.sort();
        let mut all = held.clone();
        all.sort();
        assert_eq!(planned, all);
        for (owner, ids) in &plan {
            assert!(
                ids.iter()
                    .all(|t| without_b.owner_of_trace(t) == Some(owner))
            );
        }
    }

    #[test]
    fn traces_held_but_owned_elsewhere_are_planned_even_without_a_ring_change() {
        let a = NodeId::from("a");
        let same = ring(&["a", "b"]);
        let foreign: Vec<TraceId> = traces(200)
            .into_iter()
            .filter(|t| same.owner_of_trace(t) == Some(&NodeId::from("b")))
            .collect();
        let plan = plan_traces(&a, &same, foreign.clone());
        assert_eq!(plan.get(&NodeId::from("b")), Some(&foreign));
        assert!(
            plan_traces(&a, &Ring::new(8), foreign).is_empty(),
            "empty ring: nowhere to send"
        );
    }

    #[test]
    fn decisions_go_to_new_owners_only_when_the_owner_changed() {
        let a = NodeId::from("a");
        let old = ring(&["a", "b"]);
        let new = ring(&["a", "b", "c"]);
        let ids = traces(2000);
        let plan = plan_decisions(&a, &old, &new, ids.clone(), |t| t);
        for (owner, planned) in &plan {
            assert_ne!(owner, &a);
            for t in planned {
                assert_eq!(new.owner_of_trace(t), Some(owner));
                assert_ne!(old.owner_of_trace(t), Some(owner));
            }
        }
        let expected = ids
            .iter()
            .filter(|t| moved_between(&old, &new, t) && new.owner_of_trace(t) != Some(&a))
            .count();
        assert_eq!(plan.values().map(Vec::len).sum::<usize>(), expected);
        assert!(expected > 0);
        assert!(
            plan_decisions(&a, &new, &new, ids, |t| t).is_empty(),
            "no change, nothing to send"
        );
    }

    #[test]
    fn topology_includes_or_excludes_the_local_node() {
        let member = |id: &str, role: Role, port: u16| NodeIdentity {
            node_id: id.into(),
            address: SocketAddr::from(([10, 0, 0, 1], 7946)),
            role,
            generation: 1,
            forward: Some(SocketAddr::from(([10, 0, 0, 1], port))),
        };
        let members = vec![
            member("r-0", Role::Router, 1),
            member("s-0", Role::Sampler, 2),
            member("s-1", Role::Sampler, 3),
        ];
        let local = NodeId::from("s-1");
        let local_forward = SocketAddr::from(([127, 0, 0, 1], 9));
        let with = Topology::from_members(16, &members, &local, local_forward, true);
        assert_eq!(
            with.ring.members(),
            &[NodeId::from("s-0"), NodeId::from("s-1")]
        );
        assert_eq!(
            with.forward[&local], local_forward,
            "the local address is the configured one"
        );
        assert_eq!(with.forward[&NodeId::from("s-0")].port(), 2);
        assert_eq!(with.index_of(&local), Some(1));
        let without = Topology::from_members(16, &members, &local, local_forward, false);
        assert_eq!(without.ring.members(), &[NodeId::from("s-0")]);
        assert_eq!(without.index_of(&local), None);
    }

    #[test]
    fn byte_batches_respect_the_bound_and_cover_everything() {
        assert_eq!(
            batches_by_bytes(&[4, 4, 4, 10, 1], 8),
            vec![0..2, 2..3, 3..4, 4..5]
        );
        assert_eq!(
            batches_by_bytes(&[], 8),
            Vec::<std::ops::Range<usize>>::new()
        );
        assert_eq!(batches_by_bytes(&[1, 1, 1], 100), vec![0..3]);
    }
}
