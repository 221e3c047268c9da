use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::time::Duration;

use opentelemetry_proto::tonic::common::v1::any_value;
use opentelemetry_proto::tonic::metrics::v1::Exemplar;
use opentelemetry_proto::tonic::resource::v1::Resource;
use otel_tail_proto::v1;
use otel_tail_shared::otlp::{kv_int, kv_str};
use proptest::prelude::*;
use prost::Message;

use super::*;

const SEC: u64 = 1_000_000_000;

fn id(n: u8) -> [u8; 16] {
    let mut id = [0; 16];
    id[15] = n;
    id[0] = 1;
    id
}

fn checkout() -> ResourceIdentity {
    ResourceIdentity::new("checkout", "checkout-1", "", "")
}

fn notice(trace: u8, start: u64, end: u64, correlate: bool) -> DecisionNotice {
    DecisionNotice {
        trace_id: id(trace),
        resources: vec![checkout()],
        start_unix_nano: start,
        end_unix_nano: end,
        policy: "errors".into(),
        correlate,
    }
}

fn config(max_traces: usize) -> KeptIndexConfig {
    KeptIndexConfig {
        before: Duration::from_secs(2),
        after: Duration::from_secs(3),
        hold: Duration::from_secs(35),
        max_traces: NonZeroUsize::new(max_traces).unwrap(),
    }
}

fn resource(attributes: &[(&str, &str)]) -> Resource {
    Resource {
        attributes: attributes.iter().map(|(k, v)| kv_str(k, *v)).collect(),
        ..Default::default()
    }
}

fn exemplar(trace_id: &[u8], value: f64) -> Exemplar {
    Exemplar {
        trace_id: trace_id.to_vec(),
        value: Some(opentelemetry_proto::tonic::metrics::v1::exemplar::Value::AsDouble(value)),
        ..Default::default()
    }
}

// ---- Reason ----

#[test]
fn reasons_render_as_attribute_values() {
    assert_eq!(Reason::TraceId.as_str(), "trace_id");
    assert_eq!(Reason::Exemplar.as_str(), "exemplar");
    assert_eq!(Reason::Window.as_str(), "window");
    let kv = Reason::Window.attribute();
    assert_eq!(kv.key, "otel_tail.correlated");
    assert_eq!(
        kv.value.and_then(|v| v.value),
        Some(any_value::Value::StringValue("window".into()))
    );
}

// ---- ResourceIdentity ----

#[test]
fn identity_uses_service_instance_id_first() {
    let r = resource(&[
        ("host.name", "h1"),
        ("service.name", "svc"),
        ("k8s.pod.name", "pod-1"),
        ("service.instance.id", "i-1"),
    ]);
    let identity = ResourceIdentity::from_resource(Some(&r));
    assert_eq!(identity.key(), Some("svc\0i-1"));
    assert_eq!(identity.service_name(), "svc");
}

#[test]
fn identity_falls_back_to_pod_then_host() {
    let pod = resource(&[
        ("service.name", "svc"),
        ("host.name", "h1"),
        ("k8s.pod.name", "p"),
    ]);
    assert_eq!(
        ResourceIdentity::from_resource(Some(&pod)).key(),
        Some("svc\0p")
    );
    let host = resource(&[("service.name", "svc"), ("host.name", "h1")]);
    assert_eq!(
        ResourceIdentity::from_resource(Some(&host)).key(),
        Some("svc\0h1")
    );
    let empty_instance = resource(&[
        ("service.name", "svc"),
        ("service.instance.id", ""),
        ("host.name", "h1"),
    ]);
    assert_eq!(
        ResourceIdentity::from_resource(Some(&empty_instance)).key(),
        Some("svc\0h1"),
        "an empty attribute counts as absent"
    );
}

#[test]
fn identity_ignores_non_string_and_repeated_attributes() {
    let mut r = resource(&[("service.name", "svc"), ("service.name", "other")]);
    r.attributes.insert(0, kv_int("service.instance.id", 7));
    r.attributes.push(kv_str("service.instance.id", "later"));
    r.attributes.push(kv_str("host.name", "h"));
    let identity = ResourceIdentity::from_resource(Some(&r));
    assert_eq!(identity.key(), Some("svc\0h"));
}

#[test]
fn identity_without_attributes_has_no_key() {
    assert_eq!(ResourceIdentity::from_resource(None).key(), None);
    let r = resource(&[("deployment.environment", "prod")]);
    assert_eq!(ResourceIdentity::from_resource(Some(&r)).key(), None);
    assert_eq!(
        ResourceIdentity::new("svc", "", "", "").key(),
        Some("svc\0"),
        "service.name alone still identifies a resource"
    );
}

#[test]
fn identity_round_trips_through_proto() {
    let identity = ResourceIdentity::new("svc", "i", "pod", "host");
    assert_eq!(ResourceIdentity::from(identity.to_proto()), identity);
}

// ---- DecisionNotice ----

#[test]
fn notice_round_trips_through_the_wire() {
    let n = DecisionNotice {
        resources: vec![checkout(), ResourceIdentity::new("cart", "", "", "node-3")],
        ..notice(9, 10 * SEC, 12 * SEC, true)
    };
    let batch = v1::NoticeBatch {
        origin: "sampler-0".into(),
        sent_at_unix_nano: 13 * SEC,
        notices: vec![n.to_proto()],
        sealed: None,
    };
    let decoded = v1::NoticeBatch::decode(batch.encode_to_vec().as_slice()).unwrap();
    assert_eq!(decoded.origin, "sampler-0");
    assert_eq!(decoded.sent_at_unix_nano, 13 * SEC);
    let back = DecisionNotice::try_from(decoded.notices[0].clone()).unwrap();
    assert_eq!(back, n);
}

#[test]
fn notice_with_bad_trace_id_or_window_is_refused() {
    let mut p = notice(1, SEC, 2 * SEC, true).to_proto();
    p.trace_id = vec![1; 8];
    assert_eq!(
        DecisionNotice::try_from(p.clone()),
        Err(NoticeError::InvalidTraceId { len: 8 })
    );
    p.trace_id = vec![0; 16];
    assert_eq!(
        DecisionNotice::try_from(p),
        Err(NoticeError::InvalidTraceId { len: 16 })
    );
    let mut p = notice(1, 5 * SEC, 4 * SEC, true).to_proto();
    assert_eq!(
        DecisionNotice::try_from(p.clone()),
        Err(NoticeError::InvertedWindow {
            start: 5 * SEC,
            end: 4 * SEC
        })
    );
    p.end_time_unix_nano = 5 * SEC;
    assert!(
        DecisionNotice::try_from(p).is_ok(),
        "a zero-length window is valid"
    );
}

// ---- KeptIndex matching ----

#[test]
fn log_with_kept_trace_id_matches_regardless_of_resource_and_time() {
    let mut index = KeptIndex::new(config(10));
    index.insert(&notice(1, 100 * SEC, 110 * SEC, false), 140 * SEC);
    let elsewhere = ResourceIdentity::new("other", "x", "", "");
    assert_eq!(
        index.match_log(Some(id(1)), &elsewhere, 5 * SEC),
        Some(Reason::TraceId)
    );
    assert_eq!(index.match_log(Some(id(2)), &elsewhere, 105 * SEC), None);
    assert_eq!(index.match_log(None, &elsewhere, 105 * SEC), None);
}

#[test]
fn window_bounds_are_inclusive_after_widening() {
    let mut index = KeptIndex::new(config(10));
    index.insert(&notice(1, 100 * SEC, 110 * SEC, true), 140 * SEC);
    let r = checkout();
    // before = 2s, after = 3s: [98s, 113s].
    assert_eq!(index.match_log(None, &r, 98 * SEC), Some(Reason::Window));
    assert_eq!(index.match_log(None, &r, 98 * SEC - 1), None);
    assert_eq!(index.match_log(None, &r, 113 * SEC), Some(Reason::Window));
    assert_eq!(index.match_log(None, &r, 113 * SEC + 1), None);
    assert_eq!(index.match_log(None, &r, 105 * SEC), Some(Reason::Window));
    assert_eq!(
        index.match_log(Some(id(7)), &r, 105 * SEC),
        Some(Reason::Window),
        "a log of another (dropped) trace on the same resource in the window"
    );
    assert_eq!(index.match_log(None, &r, 0), None, "unknown time");
}

#[test]
fn correlate_false_matches_by_trace_id_only() {
    let mut index = KeptIndex::new(config(10));
    index.insert(&notice(1, 100 * SEC, 110 * SEC, false), 140 * SEC);
    let r = checkout();
    assert_eq!(index.match_log(None, &r, 105 * SEC), None);
    assert_eq!(index.match_point(&[], &r, 105 * SEC), None);
    assert_eq!(
        index.match_log(Some(id(1)), &r, 105 * SEC),
        Some(Reason::TraceId)
    );
    assert_eq!(
        index.match_point(&[id(1)], &r, 105 * SEC),
        Some(Reason::Exemplar)
    );
}

#[test]
fn window_match_needs_the_same_resource() {
    let mut index = KeptIndex::new(config(10));
    index.insert(
        &DecisionNotice {
            resources: vec![
                ResourceIdentity::new("checkout", "checkout-1", "pod-a", "host-a"),
                ResourceIdentity::new("cart", "", "", "host-b"),
            ],
            ..notice(1, 100 * SEC, 110 * SEC, true)
        },
        140 * SEC,
    );
    let t = 105 * SEC;
    let same_instance_other_host = ResourceIdentity::new("checkout", "checkout-1", "", "host-z");
    assert_eq!(
        index.match_log(None, &same_instance_other_host, t),
        Some(Reason::Window),
        "service.instance.id decides, not host"
    );
    let other_instance = ResourceIdentity::new("checkout", "checkout-2", "pod-a", "host-a");
    assert_eq!(index.match_log(None, &other_instance, t), None);
    let cart_on_host = ResourceIdentity::new("cart", "", "", "host-b");
    assert_eq!(
        index.match_log(None, &cart_on_host, t),
        Some(Reason::Window)
    );
    let cart_other_host = ResourceIdentity::new("cart", "", "", "host-c");
    assert_eq!(index.match_log(None, &cart_other_host, t), None);
    let anonymous = ResourceIdentity::from_resource(None);
    assert_eq!(index.match_log(None, &anonymous, t), None);
}

#[test]
fn anonymous_resources_never_window_match_each_other() {
    let mut index = KeptIndex::new(config(10));
    index.insert(
        &DecisionNotice {
            resources: vec![ResourceIdentity::from_resource(None)],
            ..notice(1, 100 * SEC, 110 * SEC, true)
        },
        140 * SEC,
    );
    assert_eq!(
        index.match_log(None, &ResourceIdentity::from_resource(None), 105 * SEC),
        None
    );
}

#[test]
fn window_lookup_finds_long_windows_among_short_ones() {
    let mut index = KeptIndex::new(config(100));
    // One long trace, then many short ones starting later on the same resource.
    index.insert(&notice(1, 100 * SEC, 1_000 * SEC, true), 1_000 * SEC);
    for n in 2..50u8 {
        let start = (200 + u64::from(n)) * SEC;
        index.insert(&notice(n, start, start + 1, true), 1_000 * SEC);
    }
    let r = checkout();
    assert_eq!(index.match_log(None, &r, 150 * SEC), Some(Reason::Window));
    assert_eq!(index.match_log(None, &r, 900 * SEC), Some(Reason::Window));
    assert_eq!(index.match_log(None, &r, 1_004 * SEC), None);
}

#[test]
fn exemplar_match_and_filter_keep_only_kept_exemplars() {
    let mut index = KeptIndex::new(config(10));
    index.insert(&notice(1, 100 * SEC, 110 * SEC, false), 140 * SEC);
    let other = ResourceIdentity::new("other", "", "", "");
    let mut exemplars = vec![
        exemplar(&id(2), 1.0),
        exemplar(&id(1), 2.0),
        exemplar(&[], 3.0),
        exemplar(&[1; 8], 4.0),
    ];
    assert_eq!(
        index.match_exemplars(&exemplars, &other, 500 * SEC),
        Some(Reason::Exemplar)
    );
    assert_eq!(
        index.match_point(&[id(2), id(1)], &other, 500 * SEC),
        Some(Reason::Exemplar)
    );
    assert_eq!(index.match_point(&[id(2)], &other, 500 * SEC), None);
    assert_eq!(index.retain_kept_exemplars(&mut exemplars), 3);
    assert_eq!(exemplars, vec![exemplar(&id(1), 2.0)]);

    let mut unrelated = vec![exemplar(&id(3), 1.0)];
    assert_eq!(index.match_exemplars(&unrelated, &other, 105 * SEC), None);
    assert_eq!(index.retain_kept_exemplars(&mut unrelated), 1);
    assert!(unrelated.is_empty());
}

#[test]
fn exemplar_wins_over_window() {
    let mut index = KeptIndex::new(config(10));
    index.insert(&notice(1, 100 * SEC, 110 * SEC, true), 140 * SEC);
    let r = checkout();
    assert_eq!(
        index.match_point(&[id(1)], &r, 105 * SEC),
        Some(Reason::Exemplar)
    );
    assert_eq!(
        index.match_point(&[id(9)], &r, 105 * SEC),
        Some(Reason::Window)
    );
    assert_eq!(
        index.match_log(Some(id(1)), &r, 105 * SEC),
        Some(Reason::TraceId)
    );
}

#[test]
fn repeated_notice_merges_windows_and_resources() {
    let mut index = KeptIndex::new(config(10));
    index.insert(&notice(1, 100 * SEC, 110 * SEC, false), 140 * SEC);
    let cart = ResourceIdentity::new("cart", "c-1", "", "");
    index.insert(
        &DecisionNotice {
            resources: vec![cart.clone()],
            ..notice(1, 120 * SEC, 130 * SEC, true)
        },
        141 * SEC,
    );
    assert_eq!(index.len(), 1);
    // Correlating now, over [98s, 133s], for both resources.
    assert_eq!(
        index.match_log(None, &checkout(), 99 * SEC),
        Some(Reason::Window)
    );
    assert_eq!(
        index.match_log(None, &cart, 115 * SEC),
        Some(Reason::Window)
    );
    assert_eq!(index.match_log(None, &cart, 134 * SEC), None);
}

// ---- KeptIndex bounds ----

#[test]
fn traces_expire_after_window_end_plus_hold() {
    let mut index = KeptIndex::new(config(10));
    // end + after = 113s; hold = 35s: expires after 148s.
    index.insert(&notice(1, 100 * SEC, 110 * SEC, true), 111 * SEC);
    assert_eq!(index.expire(148 * SEC), 0);
    assert!(index.contains(&id(1)));
    assert_eq!(index.expire(148 * SEC + 1), 1);
    assert!(!index.contains(&id(1)));
    assert!(index.is_empty());
    assert_eq!(index.match_log(None, &checkout(), 105 * SEC), None);
    assert_eq!(index.match_log(Some(id(1)), &checkout(), 105 * SEC), None);
}

#[test]
fn late_notice_is_kept_for_hold_after_arrival() {
    let mut index = KeptIndex::new(config(10));
    // The window closed at 113s, but the notice arrives at 500s: items held since before
    // 500s must still find it.
    index.insert(&notice(1, 100 * SEC, 110 * SEC, true), 500 * SEC);
    assert_eq!(index.expire(535 * SEC), 0);
    assert_eq!(
        index.match_log(Some(id(1)), &checkout(), 0),
        Some(Reason::TraceId)
    );
    assert_eq!(index.expire(535 * SEC + 1), 1);
}

#[test]
fn count_bound_forgets_the_trace_closest_to_expiry() {
    let mut index = KeptIndex::new(config(2));
    // Expiry: trace 1 at 248s, trace 2 at 148s, trace 3 at 348s.
    index.insert(&notice(1, 200 * SEC, 210 * SEC, true), 200 * SEC);
    index.insert(&notice(2, 100 * SEC, 110 * SEC, true), 100 * SEC);
    index.insert(&notice(3, 300 * SEC, 310 * SEC, true), 300 * SEC);
    assert_eq!(index.len(), 2);
    assert_eq!(index.evicted(), 1);
    assert!(!index.contains(&id(2)), "earliest window end goes first");
    assert!(index.contains(&id(1)) && index.contains(&id(3)));
    assert_eq!(index.match_log(None, &checkout(), 105 * SEC), None);
    assert_eq!(
        index.match_log(None, &checkout(), 205 * SEC),
        Some(Reason::Window)
    );
}

// ---- HoldQueue ----

fn limits(max_items: usize, max_bytes: usize) -> HoldLimits {
    HoldLimits {
        window: Duration::from_secs(35),
        max_items,
        max_bytes,
    }
}

#[test]
fn default_window_is_decision_wait_plus_five_seconds() {
    assert_eq!(
        default_window(Duration::from_secs(30)),
        Duration::from_secs(35)
    );
}

#[test]
fn items_are_held_for_the_window_then_classified() {
    let mut queue = HoldQueue::new(limits(100, 1_000));
    let never = |_: &mut u32| -> Option<Reason> { panic!("settled too early") };
    assert!(queue.insert(1u32, 10, 100 * SEC, never).is_empty());
    assert!(queue.insert(2u32, 10, 101 * SEC, never).is_empty());
    assert_eq!(queue.next_due(), Some(135 * SEC));
    assert!(queue.release_due(135 * SEC - 1, never).is_empty());
    let settled = queue.release_due(135 * SEC, |item| {
        *item += 100;
        Some(Reason::Window)
    });
    assert_eq!(
        settled,
        vec![Settled {
            item: 101,
            fate: Fate::Raw(Reason::Window),
            early: false
        }]
    );
    assert_eq!((queue.len(), queue.bytes()), (1, 10));
    let settled = queue.release_due(200 * SEC, |_| None);
    assert_eq!(settled[0].fate, Fate::Summary);
    assert!(queue.is_empty());
    assert_eq!(queue.bytes(), 0);
    assert_eq!(queue.next_due(), None);
    assert_eq!(queue.settled_early(), 0);
}

#[test]
fn over_a_bound_the_oldest_settle_early_and_are_counted() {
    let mut queue = HoldQueue::new(limits(2, 100));
    let summary = |_: &mut u32| None;
    assert!(queue.insert(1, 10, SEC, summary).is_empty());
    assert!(queue.insert(2, 10, SEC, summary).is_empty());
    let early = queue.insert(3, 10, SEC, summary);
    assert_eq!(
        early.iter().map(|s| (s.item, s.early)).collect::<Vec<_>>(),
        vec![(1, true)]
    );
    let early = queue.insert(4, 95, SEC, summary);
    assert_eq!(early.iter().map(|s| s.item).collect::<Vec<_>>(), vec![2, 3]);
    assert_eq!((queue.len(), queue.bytes()), (1, 95));
    let early = queue.insert(5, 500, SEC, summary);
    assert_eq!(
        early.iter().map(|s| s.item).collect::<Vec<_>>(),
        vec![4, 5],
        "an item over the byte bound on its own is settled at once"
    );
    assert_eq!(queue.settled_early(), 5);
    assert!(queue.is_empty());
}

#[test]
fn clock_stepping_back_never_shortens_a_hold() {
    let mut queue = HoldQueue::new(limits(10, 1_000));
    queue.insert(1u8, 1, 100 * SEC, |_| None);
    queue.insert(2u8, 1, 50 * SEC, |_| None);
    assert!(queue.release_due(134 * SEC, |_| None).is_empty());
    let settled = queue.release_due(135 * SEC, |_| None);
    assert_eq!(
        settled.iter().map(|s| s.item).collect::<Vec<_>>(),
        vec![1, 2]
    );
}

#[test]
fn drain_settles_everything_once() {
    let mut queue = HoldQueue::new(limits(10, 1_000));
    for n in 0..5u8 {
        queue.insert(n, 1, SEC, |_| None);
    }
    let settled = queue.drain(|n| (*n % 2 == 0).then_some(Reason::TraceId));
    assert_eq!(settled.len(), 5);
    assert!(settled.iter().all(|s| s.early));
    assert_eq!(
        settled
            .iter()
            .filter(|s| s.fate == Fate::Raw(Reason::TraceId))
            .count(),
        3
    );
    assert!(queue.is_empty());
    assert_eq!(queue.settled_early(), 0);
}

/// Hold queue and kept index together: logs held when the notice arrives are settled
/// against it; a log neither of a kept trace nor in its window goes to the summary path.
#[test]
fn held_logs_settle_against_notices_that_arrive_during_the_hold() {
    let mut index = KeptIndex::new(config(10));
    let mut queue: HoldQueue<(Option<[u8; 16]>, u64)> = HoldQueue::new(limits(10, 1_000));
    let identity = checkout();
    queue.insert((Some(id(1)), 100 * SEC), 1, 100 * SEC, |_| None);
    queue.insert((None, 105 * SEC), 1, 105 * SEC, |_| None);
    queue.insert((Some(id(2)), 105 * SEC), 1, 105 * SEC, |_| None);
    queue.insert((Some(id(2)), 120 * SEC), 1, 120 * SEC, |_| None);
    // Kept trace 1 over [99s, 106s], widened to [97s, 109s]; notice arrives at 131s.
    index.insert(&notice(1, 99 * SEC, 106 * SEC, true), 131 * SEC);
    index.expire(160 * SEC);
    let settled = queue.release_due(160 * SEC, |(trace, time)| {
        index.match_log(*trace, &identity, *time)
    });
    let fates: Vec<Fate> = settled.iter().map(|s| s.fate).collect();
    assert_eq!(
        fates,
        vec![
            Fate::Raw(Reason::TraceId),
            Fate::Raw(Reason::Window),
            Fate::Raw(Reason::Window),
            Fate::Summary,
        ]
    );
    assert!(queue.is_empty());
}

/// One step of the hold-queue property test.
#[derive(Debug, Clone)]
enum Op {
    Insert { bytes: usize },
    Advance { secs: u64 },
    Release,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0usize..40).prop_map(|bytes| Op::Insert { bytes }),
        2 => (0u64..20).prop_map(|secs| Op::Advance { secs }),
        1 => Just(Op::Release),
    ]
}

/// Deterministic classification of item `n`, standing in for the kept-trace matcher.
fn classify(n: &mut u64) -> Option<Reason> {
    match *n % 4 {
        0 => Some(Reason::TraceId),
        1 => Some(Reason::Window),
        _ => None,
    }
}

proptest! {
    /// Every inserted item is settled exactly once, with the classifier's fate, never
    /// before its window unless marked early, and the queue stays within its bounds.
    #[test]
    fn hold_queue_partition_is_strict(
        ops in prop::collection::vec(op(), 0..200),
        max_items in 1usize..10,
        max_bytes in 1usize..120,
    ) {
        let window = 10 * SEC;
        let mut queue = HoldQueue::new(HoldLimits {
            window: Duration::from_nanos(window),
            max_items,
            max_bytes,
        });
        let mut now = 1_000 * SEC;
        let mut next = 0u64;
        let mut arrivals: HashMap<u64, u64> = HashMap::new();
        let mut seen: HashMap<u64, usize> = HashMap::new();
        let mut record = |settled: Vec<Settled<u64>>, now: u64, arrivals: &HashMap<u64, u64>| {
            for s in settled {
                let mut n = s.item;
                prop_assert_eq!(s.fate, classify(&mut n).map_or(Fate::Summary, Fate::Raw));
                if !s.early {
                    prop_assert!(now >= arrivals[&s.item] + window);
                }
                *seen.entry(s.item).or_default() += 1;
            }
            Ok(())
        };
        for op in ops {
            match op {
                Op::Insert { bytes } => {
                    arrivals.insert(next, now);
                    let early = queue.insert(next, bytes, now, classify);
                    next += 1;
                    record(early, now, &arrivals)?;
                    prop_assert!(queue.len() <= max_items && queue.bytes() <= max_bytes);
                }
                Op::Advance { secs } => now += secs * SEC,
                Op::Release => {
                    let due = queue.release_due(now, classify);
                    record(due, now, &arrivals)?;
                    prop_assert!(queue.next_due().is_none_or(|d| d > now));
                }
            }
        }
        let rest = queue.drain(classify);
        record(rest, now, &arrivals)?;
        prop_assert!(queue.is_empty() && queue.bytes() == 0);
        prop_assert_eq!(seen.len() as u64, next);
        prop_assert!(seen.values().all(|&c| c == 1));
    }
}

proptest! {
    /// Window matching agrees with a brute-force scan of the inserted notices, whatever
    /// their overlap, order and repetition.
    #[test]
    fn window_match_agrees_with_brute_force(
        notices in prop::collection::vec((1u8..20, 0u64..1_000, 0u64..300, any::<bool>()), 1..40),
        queries in prop::collection::vec(1u64..1_400, 1..40),
    ) {
        let mut index = KeptIndex::new(config(1_000));
        let mut model: HashMap<u8, (u64, u64, bool)> = HashMap::new();
        for &(trace, start, len, correlate) in &notices {
            let (start, end) = (start * SEC, (start + len) * SEC);
            index.insert(&notice(trace, start, end, correlate), 0);
            let entry = model.entry(trace).or_insert((start, end, correlate));
            *entry = (entry.0.min(start), entry.1.max(end), entry.2 | correlate);
        }
        let r = checkout();
        for t in queries {
            let t = t * SEC;
            let expected = model.values().any(|&(start, end, correlate)| {
                correlate && start.saturating_sub(2 * SEC) <= t && t <= end + 3 * SEC
            });
            prop_assert_eq!(index.match_log(None, &r, t), expected.then_some(Reason::Window));
        }
    }
}
