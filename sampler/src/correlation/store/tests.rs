use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use opentelemetry_proto::tonic::common::v1::{AnyValue, any_value};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::metrics::v1::{
    Gauge, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, metric, number_data_point,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use otel_tail_shared::otlp::kv_str;
use otel_tail_shared::testing;
use prost::Message;

use super::*;
use crate::storage::CF_QUEUE;

const SECOND: u64 = 1_000_000_000;
const WINDOW: Duration = Duration::from_secs(10);

fn limits(max_items: usize, max_bytes: usize) -> HoldLimits {
    HoldLimits {
        window: WINDOW,
        max_items,
        max_bytes,
    }
}

fn resource(service: &str) -> Option<Resource> {
    Some(testing::resource(vec![kv_str("service.name", service)]))
}

fn logs(service: &str, body: &str) -> Vec<u8> {
    ResourceLogs {
        resource: resource(service),
        scope_logs: vec![ScopeLogs {
            log_records: vec![LogRecord {
                body: Some(AnyValue {
                    value: Some(any_value::Value::StringValue(body.into())),
                }),
                ..LogRecord::default()
            }],
            ..ScopeLogs::default()
        }],
        ..ResourceLogs::default()
    }
    .encode_to_vec()
}

fn metrics(service: &str, value: f64) -> Vec<u8> {
    ResourceMetrics {
        resource: resource(service),
        scope_metrics: vec![ScopeMetrics {
            metrics: vec![Metric {
                name: "queue.depth".into(),
                data: Some(metric::Data::Gauge(Gauge {
                    data_points: vec![NumberDataPoint {
                        value: Some(number_data_point::Value::AsDouble(value)),
                        ..NumberDataPoint::default()
                    }],
                })),
                ..Metric::default()
            }],
            ..ScopeMetrics::default()
        }],
        ..ResourceMetrics::default()
    }
    .encode_to_vec()
}

fn open(dir: &Path, limits: HoldLimits) -> (Arc<Storage>, HoldStore) {
    let storage = Arc::new(Storage::open(dir, true).unwrap());
    let store = HoldStore::new(storage.clone(), limits);
    store.recover(0).unwrap();
    (storage, store)
}

/// Holds `group` at `now` and writes it at once.
fn hold_one(storage: &Storage, store: &HoldStore, kind: HeldKind, group: &[u8], now: u64) {
    let mut batch = WriteBatch::default();
    store.hold(&mut batch, kind, group, now);
    storage.write(batch).unwrap();
}

fn disk_keys(storage: &Storage) -> Vec<HoldKey> {
    storage
        .db()
        .iterator_cf(storage.cf(CF_HOLD), IteratorMode::Start)
        .map(|e| HoldKey::from_bytes(&e.unwrap().0).unwrap())
        .collect()
}

/// What the simulated export queue received: the payloads put into `queue`.
fn exported(storage: &Storage) -> Vec<Vec<u8>> {
    storage
        .db()
        .iterator_cf(storage.cf(CF_QUEUE), IteratorMode::Start)
        .map(|e| e.unwrap().1.to_vec())
        .collect()
}

/// Settles `items` the way the engine must: enqueue for export and forget, in one batch.
fn settle(storage: &Storage, store: &HoldStore, items: &[HeldItem]) -> WriteBatch {
    let mut batch = WriteBatch::default();
    for item in items {
        batch.put_cf(storage.cf(CF_QUEUE), item.key.to_bytes(), &item.bytes);
    }
    let keys: Vec<HoldKey> = items.iter().map(|i| i.key).collect();
    store.forget(&mut batch, &keys);
    batch
}

#[test]
fn keys_order_like_their_bytes() {
    let a = HoldKey {
        arrived: 5,
        seq: u64::MAX,
    };
    let b = HoldKey { arrived: 6, seq: 0 };
    assert!(a < b);
    assert!(a.to_bytes() < b.to_bytes());
    assert_eq!(HoldKey::from_bytes(&a.to_bytes()), Some(a));
    assert_eq!(HoldKey::from_bytes(&[0; 15]), None);
}

#[test]
fn items_round_trip_and_are_released_in_time_order_after_the_window() {
    let dir = tempfile::tempdir().unwrap();
    let (storage, store) = open(dir.path(), limits(100, 1 << 20));
    let t0 = 1_000 * SECOND;
    let first = logs("checkout", "no trace id here");
    let second = metrics("checkout", 42.0);
    let third = logs("cart", "later");
    hold_one(&storage, &store, HeldKind::Logs, &first, t0);
    hold_one(&storage, &store, HeldKind::Metrics, &second, t0 + SECOND);
    hold_one(&storage, &store, HeldKind::Logs, &third, t0 + 2 * SECOND);
    assert_eq!(store.stats().held_items, 3);
    assert_eq!(
        store.stats().held_bytes,
        first.len() + second.len() + third.len()
    );
    assert_eq!(store.next_due(), Some(t0 + 10 * SECOND));

    assert!(
        store
            .release_due(t0 + 10 * SECOND - 1, 100)
            .unwrap()
            .is_empty()
    );
    let due = store.release_due(t0 + 11 * SECOND, 100).unwrap();
    assert_eq!(due.len(), 2, "the third is not due yet");
    assert_eq!(due[0].kind, HeldKind::Logs);
    assert_eq!(due[0].arrived, t0);
    assert!(!due[0].early);
    let decoded = ResourceLogs::decode(due[0].bytes.as_slice()).unwrap();
    assert_eq!(decoded.encode_to_vec(), first);
    assert_eq!(due[1].kind, HeldKind::Metrics);
    let decoded = ResourceMetrics::decode(due[1].bytes.as_slice()).unwrap();
    assert_eq!(decoded.encode_to_vec(), second);
    assert_eq!(store.stats().in_flight, 2);
    assert_eq!(store.next_due(), Some(t0 + 12 * SECOND));

    assert!(
        store.release_due(t0 + 11 * SECOND, 100).unwrap().is_empty(),
        "released items are not released twice"
    );
    storage.write(settle(&storage, &store, &due)).unwrap();
    assert_eq!(store.stats().in_flight, 0);
    assert_eq!(disk_keys(&storage).len(), 1);

    let last = store.release_due(t0 + 60 * SECOND, 100).unwrap();
    assert_eq!(last.len(), 1);
    assert_eq!(last[0].bytes, third);
    storage.write(settle(&storage, &store, &last)).unwrap();
    assert!(disk_keys(&storage).is_empty());
    assert_eq!(store.stats(), HoldStats::default());
    assert_eq!(store.next_due(), None);
}

#[test]
fn clock_stepping_back_keeps_arrival_order_and_only_delays() {
    let dir = tempfile::tempdir().unwrap();
    let (storage, store) = open(dir.path(), limits(100, 1 << 20));
    let t0 = 500 * SECOND;
    hold_one(&storage, &store, HeldKind::Logs, b"a", t0);
    hold_one(&storage, &store, HeldKind::Logs, b"b", t0 - 3 * SECOND);
    let keys = disk_keys(&storage);
    assert_eq!(keys.len(), 2);
    assert_eq!(
        keys[1].arrived, t0,
        "a step back counts as the latest arrival"
    );
    let released = store.release_due(t0 + 10 * SECOND, 100).unwrap();
    let bytes: Vec<&[u8]> = released.iter().map(|i| i.bytes.as_slice()).collect();
    assert_eq!(bytes, vec![b"a".as_slice(), b"b".as_slice()]);
}

#[test]
fn over_the_item_bound_the_oldest_are_released_early() {
    let dir = tempfile::tempdir().unwrap();
    let (storage, store) = open(dir.path(), limits(2, 1 << 20));
    let t0 = 100 * SECOND;
    for (i, body) in [b"one", b"two"].iter().enumerate() {
        let mut batch = WriteBatch::default();
        let outcome = store.hold(&mut batch, HeldKind::Logs, *body, t0 + i as u64);
        assert_eq!(outcome.over_bounds, 0);
        storage.write(batch).unwrap();
    }
    let mut batch = WriteBatch::default();
    let outcome = store.hold(&mut batch, HeldKind::Metrics, b"three", t0 + 2);
    assert_eq!(outcome.over_bounds, 1);
    storage.write(batch).unwrap();

    let released = store.release_due(t0 + 3, 100).unwrap();
    assert_eq!(released.len(), 1, "only what is over the bound goes early");
    assert_eq!(released[0].bytes, b"one");
    assert!(released[0].early);
    let stats = store.stats();
    assert_eq!((stats.held_items, stats.released_early), (2, 1));
    assert!(store.release_due(t0 + 3, 100).unwrap().is_empty());
}

#[test]
fn over_the_byte_bound_the_oldest_are_released_early_within_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let (storage, store) = open(dir.path(), limits(100, 10));
    let t0 = 100 * SECOND;
    let mut last = HoldOutcome {
        key: HoldKey { arrived: 0, seq: 0 },
        over_bounds: 0,
    };
    for i in 0..5u64 {
        let mut batch = WriteBatch::default();
        last = store.hold(&mut batch, HeldKind::Logs, &[i as u8; 4], t0 + i);
        storage.write(batch).unwrap();
    }
    assert_eq!(last.over_bounds, 3, "20 bytes held, 10 allowed, 4 each");
    let first = store.release_due(t0 + 5, 2).unwrap();
    assert_eq!(first.len(), 2, "the limit caps one call");
    let second = store.release_due(t0 + 5, 100).unwrap();
    assert_eq!(second.len(), 1);
    let order: Vec<u8> = first.iter().chain(&second).map(|i| i.bytes[0]).collect();
    assert_eq!(order, vec![0, 1, 2]);
    assert!(first.iter().chain(&second).all(|i| i.early));
    assert_eq!(store.stats().held_bytes, 8);
    assert_eq!(store.stats().released_early, 3);
}

#[test]
fn a_crash_during_the_hold_keeps_every_item_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let t0 = 1_000 * SECOND;
    let all: Vec<Vec<u8>> = (0..20)
        .map(|i| logs("svc", &format!("record {i}")))
        .collect();
    {
        let (storage, store) = open(dir.path(), limits(1000, 1 << 20));
        for (i, group) in all.iter().enumerate() {
            hold_one(
                &storage,
                &store,
                HeldKind::Logs,
                group,
                t0 + i as u64 * SECOND,
            );
        }
        // Items 0..=5 fall due; the first three are settled, the other three released but
        // the process dies before their batch is written.
        let due = store.release_due(t0 + 15 * SECOND, 100).unwrap();
        assert_eq!(due.len(), 6);
        storage.write(settle(&storage, &store, &due[..3])).unwrap();
        let _lost_with_the_crash = settle(&storage, &store, &due[3..]);
    }

    let storage = Arc::new(Storage::open(dir.path(), true).unwrap());
    let store = HoldStore::new(storage.clone(), limits(1000, 1 << 20));
    let restart = t0 + 16 * SECOND;
    assert_eq!(store.recover(restart).unwrap(), 17);
    assert_eq!(store.next_due(), Some(t0 + 13 * SECOND), "arrival is kept");
    let overdue = store.release_due(restart, 100).unwrap();
    assert_eq!(overdue.len(), 4, "items 3..=6 were already due");
    storage.write(settle(&storage, &store, &overdue)).unwrap();
    let rest = store.release_due(restart + 60 * SECOND, 100).unwrap();
    assert_eq!(rest.len(), 13);
    storage.write(settle(&storage, &store, &rest)).unwrap();

    let out = exported(&storage);
    assert_eq!(out.len(), all.len(), "nothing lost, nothing duplicated");
    let out: BTreeSet<Vec<u8>> = out.into_iter().collect();
    let all: BTreeSet<Vec<u8>> = all.into_iter().collect();
    assert_eq!(out, all);
    assert!(disk_keys(&storage).is_empty());
}

#[test]
fn recovery_does_not_hold_longer_than_one_window_when_the_clock_stepped_back() {
    let dir = tempfile::tempdir().unwrap();
    let t0 = 10_000 * SECOND;
    {
        let (storage, store) = open(dir.path(), limits(100, 1 << 20));
        hold_one(&storage, &store, HeldKind::Metrics, b"future", t0);
    }
    let storage = Arc::new(Storage::open(dir.path(), true).unwrap());
    let store = HoldStore::new(storage.clone(), limits(100, 1 << 20));
    let restart = t0 - 3_600 * SECOND;
    assert_eq!(store.recover(restart).unwrap(), 1);
    assert_eq!(store.next_due(), Some(restart + 10 * SECOND));
    let released = store.release_due(restart + 10 * SECOND, 10).unwrap();
    assert_eq!(released.len(), 1);
    assert_eq!(released[0].arrived, t0);
    assert_eq!(released[0].kind, HeldKind::Metrics);
}

#[test]
fn an_unwritten_hold_is_skipped_then_abandoned() {
    let dir = tempfile::tempdir().unwrap();
    let (storage, store) = open(dir.path(), limits(100, 1 << 20));
    let t0 = 100 * SECOND;
    let mut never_written = WriteBatch::default();
    store.hold(&mut never_written, HeldKind::Logs, b"lost write", t0);
    hold_one(&storage, &store, HeldKind::Logs, b"written", t0 + 1);
    drop(never_written);

    let released = store.release_due(t0 + 10 * SECOND + 1, 10).unwrap();
    assert_eq!(released.len(), 1);
    assert_eq!(released[0].bytes, b"written");
    assert_eq!(
        store.stats().held_items,
        1,
        "the unwritten one may still land"
    );
    assert!(
        store
            .release_due(t0 + 20 * SECOND - 1, 10)
            .unwrap()
            .is_empty()
    );
    assert_eq!(store.stats().abandoned, 0);
    assert!(store.release_due(t0 + 20 * SECOND, 10).unwrap().is_empty());
    let stats = store.stats();
    assert_eq!(
        (stats.held_items, stats.held_bytes, stats.abandoned),
        (0, 0, 1)
    );
}

#[test]
fn a_late_write_is_released_once_it_lands() {
    let dir = tempfile::tempdir().unwrap();
    let (storage, store) = open(dir.path(), limits(100, 1 << 20));
    let t0 = 100 * SECOND;
    let mut slow = WriteBatch::default();
    store.hold(&mut slow, HeldKind::Logs, b"slow", t0);
    assert!(store.release_due(t0 + 10 * SECOND, 10).unwrap().is_empty());
    storage.write(slow).unwrap();
    let released = store.release_due(t0 + 10 * SECOND, 10).unwrap();
    assert_eq!(released.len(), 1);
    assert_eq!(released[0].bytes, b"slow");
}

#[test]
fn a_corrupt_value_is_quarantined_and_the_rest_recovered() {
    let dir = tempfile::tempdir().unwrap();
    let (storage, store) = open(dir.path(), limits(100, 1 << 20));
    let mut batch = WriteBatch::default();
    store.hold(&mut batch, HeldKind::Logs, b"good", 5 * SECOND);
    storage.write(batch).unwrap();
    let key = HoldKey { arrived: 1, seq: 1 };
    storage
        .db()
        .put_cf(storage.cf(CF_HOLD), key.to_bytes(), [9u8, 1, 2])
        .unwrap();
    assert_eq!(
        store.recover(0).unwrap(),
        1,
        "the readable item is held again"
    );
    let quarantined = storage.quarantined().unwrap();
    assert_eq!(quarantined.len(), 1);
    assert_eq!(quarantined[0].key, key.to_bytes().to_vec());
    assert_eq!(quarantined[0].value, vec![9u8, 1, 2]);
    let released = store.release_due(u64::MAX, 10).unwrap();
    assert_eq!(released.len(), 1);
    assert_eq!(released[0].bytes, b"good");
}
