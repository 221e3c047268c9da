use super::*;
use crate::testing::SplitMix64;

/// Trace ids from a [`SplitMix64`] seed, the same every run.
struct Ids(SplitMix64);

impl Ids {
    fn trace_id(&mut self) -> TraceId {
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&self.0.next_u64().to_le_bytes());
        id[8..].copy_from_slice(&self.0.next_u64().to_le_bytes());
        id
    }

    fn trace_ids(seed: u64, n: usize) -> Vec<TraceId> {
        let mut ids = Ids(SplitMix64(seed));
        (0..n).map(|_| ids.trace_id()).collect()
    }
}

fn nodes(n: usize) -> Vec<NodeId> {
    named_nodes("otel-tail-sampler-", n)
}

fn named_nodes(prefix: &str, n: usize) -> Vec<NodeId> {
    (0..n)
        .map(|i| NodeId::from(format!("{prefix}{i}")))
        .collect()
}

fn assert_balanced(n: usize) {
    assert_balanced_named("otel-tail-sampler-", n);
}

fn assert_balanced_named(prefix: &str, n: usize) {
    let ring = Ring::with_members(DEFAULT_VNODES, named_nodes(prefix, n));
    let ids = Ids::trace_ids(42 + n as u64, 100_000);
    let mut counts = vec![0usize; n];
    for id in &ids {
        counts[ring.owner_index_of_trace(id).unwrap()] += 1;
    }
    let fair = ids.len() as f64 / n as f64;
    for (node, count) in ring.members().iter().zip(&counts) {
        let deviation = (*count as f64 - fair).abs() / fair;
        assert!(
            deviation <= 0.15,
            "{node} owns {count} of {} ids, {:.1}% from its fair share {fair:.0} (all: {counts:?})",
            ids.len(),
            deviation * 100.0
        );
    }
}

#[test]
fn short_node_ids_differing_in_one_bit_are_balanced_too() {
    assert_balanced_named("s-", 3);
    assert_balanced_named("", 3);
    assert_balanced_named("sampler-", 10);
}

#[test]
fn three_nodes_share_trace_ids_within_15_percent_of_fair() {
    assert_balanced(3);
}

#[test]
fn ten_nodes_share_trace_ids_within_15_percent_of_fair() {
    assert_balanced(10);
}

#[test]
fn adding_a_fourth_node_moves_about_a_quarter_and_only_to_it() {
    let three = Ring::with_members(DEFAULT_VNODES, nodes(3));
    let mut four = three.clone();
    let newcomer = NodeId::from("otel-tail-sampler-3");
    assert!(four.add(newcomer.clone()));

    let ids = Ids::trace_ids(7, 100_000);
    let mut moved = 0usize;
    for id in &ids {
        if moved_between(&three, &four, id) {
            moved += 1;
            assert_eq!(
                four.owner_of_trace(id),
                Some(&newcomer),
                "a key moved between two old nodes"
            );
        }
    }
    let share = moved as f64 / ids.len() as f64;
    assert!(
        (0.20..=0.30).contains(&share),
        "{:.1}% of keys moved, expected about 25%",
        share * 100.0
    );
}

#[test]
fn removing_a_node_moves_only_its_keys() {
    let four = Ring::with_members(DEFAULT_VNODES, nodes(4));
    let mut three = four.clone();
    let leaving = NodeId::from("otel-tail-sampler-1");
    assert!(three.remove(&leaving));
    assert!(!three.contains(&leaving));

    for id in Ids::trace_ids(11, 20_000) {
        let before = four.owner_of_trace(&id).unwrap();
        let after = three.owner_of_trace(&id).unwrap();
        if before != &leaving {
            assert_eq!(before, after, "a key of a remaining node moved");
        } else {
            assert_ne!(after, &leaving);
        }
    }
}

#[test]
fn owners_depend_on_membership_not_insertion_order() {
    let names = nodes(5);
    let mut forward = Ring::new(64);
    for n in &names {
        forward.add(n.clone());
    }
    let mut backward = Ring::new(64);
    for n in names.iter().rev() {
        backward.add(n.clone());
    }
    // Add and remove an extra node on one side: the end state is what matters.
    let extra = NodeId::from("transient");
    backward.add(extra.clone());
    backward.remove(&extra);

    assert_eq!(forward, backward);
    for id in Ids::trace_ids(3, 10_000) {
        assert_eq!(forward.owner_of_trace(&id), backward.owner_of_trace(&id));
    }
    for key in [
        &b"checkout\0pod-1"[..],
        b"",
        b"frontend\0host-a\0http.server.duration",
    ] {
        assert_eq!(forward.owner_of_key(key), backward.owner_of_key(key));
    }
}

#[test]
fn owners_are_stable_across_builds() {
    // Routers and samplers built separately must agree: pin the owners of a few ids so a
    // change of hash function or point layout cannot go unnoticed.
    let ring = Ring::with_members(DEFAULT_VNODES, nodes(3));
    let owners: Vec<usize> = Ids::trace_ids(1, 12)
        .iter()
        .map(|id| ring.owner_index_of_trace(id).unwrap())
        .collect();
    assert_eq!(owners, [1, 0, 0, 0, 1, 0, 0, 2, 1, 2, 2, 1]);
    assert_eq!(ring.owner_index_of_key(b"checkout\0pod-1"), Some(2));
}

#[test]
fn keys_spread_over_members() {
    let ring = Ring::with_members(DEFAULT_VNODES, nodes(3));
    let mut counts = [0usize; 3];
    for i in 0..30_000u32 {
        let key = format!("service-{i}\0instance-{i}");
        counts[ring.owner_index_of_key(key.as_bytes()).unwrap()] += 1;
    }
    for count in counts {
        assert!((8_500..=11_500).contains(&count), "{counts:?}");
    }
}

#[test]
fn empty_ring_owns_nothing() {
    let mut ring = Ring::default();
    assert!(ring.is_empty());
    assert_eq!(ring.owner_of_trace(&[1; 16]), None);
    assert_eq!(ring.owner_of_key(b"svc"), None);
    assert!(!moved_between(&ring, &Ring::new(8), &[1; 16]));

    let only = NodeId::from("only");
    ring.add(only.clone());
    assert_eq!(ring.owner_of_trace(&[1; 16]), Some(&only));
    assert!(ring.remove(&only));
    assert!(!ring.remove(&only));
    assert_eq!(ring.owner_of_trace(&[1; 16]), None);
}

#[test]
fn duplicate_members_are_ignored() {
    let mut ring = Ring::new(16);
    assert!(ring.add(NodeId::from("a")));
    assert!(!ring.add(NodeId::from("a")));
    assert_eq!(ring.len(), 1);
    let built = Ring::with_members(16, [NodeId::from("a"), NodeId::from("a")]);
    assert_eq!(ring, built);
    assert_eq!(ring.vnodes(), 16);
    assert_eq!(Ring::new(0).vnodes(), 1);
}

#[test]
fn the_digest_names_the_members_and_virtual_nodes_whatever_the_order() {
    let ids = |names: &[&str]| names.iter().map(|n| NodeId::from(*n)).collect::<Vec<_>>();
    let ring = Ring::with_members(64, ids(&["a", "b", "c"]));
    let mut built = Ring::new(64);
    for id in ids(&["c", "a", "b", "a"]) {
        built.add(id);
    }
    assert_eq!(ring.digest(), built.digest(), "same members, any order");
    assert_ne!(
        ring.digest(),
        Ring::with_members(64, ids(&["a", "b"])).digest()
    );
    assert_ne!(
        ring.digest(),
        Ring::with_members(32, ids(&["a", "b", "c"])).digest()
    );
    assert_ne!(
        Ring::with_members(64, ids(&["ab", "c"])).digest(),
        Ring::with_members(64, ids(&["a", "bc"])).digest(),
        "ids are delimited"
    );
    built.remove(&NodeId::from("c"));
    assert_eq!(
        built.digest(),
        Ring::with_members(64, ids(&["a", "b"])).digest()
    );
    assert_ne!(Ring::new(64).digest(), 0, "an empty ring has a digest too");
}
