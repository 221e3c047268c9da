use std::cell::RefCell;
use std::collections::BTreeMap;

use otel_tail_shared::otlp::TraceId;

use super::requests::{CHUNK_BYTES, CHUNK_KEY_LEN, CHUNK_SUFFIX, dead_key, encode_offsets};
use super::*;

thread_local! {
    /// Item locations by trace, in arrival order, kept as the engine's index keeps them:
    /// these tests drive the storage without an engine on top (each test on its thread).
    static INDEX: RefCell<BTreeMap<TraceId, Vec<Location>>> = RefCell::default();
}

/// The engine's side of the buffer for these tests: indexing, reading and forgetting by
/// trace id through [`INDEX`].
trait Indexed {
    /// Indexes what a written request staged.
    fn committed(&self, staged: StagedRequest);
    /// Restart: forgets the index and rebuilds it from the scan (items `visit` accepts).
    fn scan_indexed(
        &self,
        visit: impl FnMut(TraceId, Location, BufferedKind, &[u8]) -> bool,
    ) -> Result<(), StorageError>;
    /// Visits `trace`'s items with a sequence below `upto`.
    fn visit_indexed(
        &self,
        trace: &TraceId,
        upto: u64,
        visit: impl FnMut(Location, BufferedKind, &[u8]),
    );
    /// Visits each of `traces`' items below its bound, with the trace's index.
    fn visit_traces(
        &self,
        traces: &[(TraceId, u64)],
        visit: impl FnMut(usize, Location, BufferedKind, &[u8]),
    );
    /// Reads `trace`'s items with a sequence below `upto`.
    fn read_trace(
        &self,
        trace: &TraceId,
        upto: u64,
    ) -> Result<Vec<(BufferedKind, Vec<u8>)>, StorageError>;
    /// Takes `trace`'s items below `upto` out of the index into `forgetting`.
    fn forget_trace(&self, forgetting: &mut Forgetting, trace: &TraceId, upto: u64);
    /// Takes exactly the items `keys` of `trace` out of the index into `forgetting`.
    fn forget_items(&self, forgetting: &mut Forgetting, trace: &TraceId, keys: &[ItemKey]);
    /// Traces with items indexed.
    fn buffered_traces(&self) -> Vec<TraceId>;
}

/// `trace`'s indexed locations below `upto`.
fn indexed(trace: &TraceId, upto: u64) -> Vec<Location> {
    INDEX.with_borrow(|index| {
        index
            .get(trace)
            .into_iter()
            .flatten()
            .filter(|l| l.key().seq < upto)
            .copied()
            .collect()
    })
}

/// Takes `trace`'s locations that `gone` selects out of the index.
fn take(trace: &TraceId, gone: impl Fn(&Location) -> bool) -> Vec<Location> {
    INDEX.with_borrow_mut(|index| {
        let Some(all) = index.get_mut(trace) else {
            return Vec::new();
        };
        let (taken, kept) = all.drain(..).partition(|l| gone(l));
        *all = kept;
        if all.is_empty() {
            index.remove(trace);
        }
        taken
    })
}

impl Indexed for Storage {
    fn committed(&self, staged: StagedRequest) {
        INDEX.with_borrow_mut(|index| {
            for (trace, location) in staged.locations() {
                index.entry(trace).or_default().push(location);
            }
        });
    }

    fn scan_indexed(
        &self,
        mut visit: impl FnMut(TraceId, Location, BufferedKind, &[u8]) -> bool,
    ) -> Result<(), StorageError> {
        INDEX.with_borrow_mut(BTreeMap::clear);
        self.scan_buffer(|trace, location, kind, payload| {
            let accepted = visit(trace, location, kind, payload);
            if accepted {
                INDEX.with_borrow_mut(|index| index.entry(trace).or_default().push(location));
            }
            accepted
        })
    }

    fn visit_indexed(
        &self,
        trace: &TraceId,
        upto: u64,
        visit: impl FnMut(Location, BufferedKind, &[u8]),
    ) {
        self.visit_trace(&indexed(trace, upto), visit).unwrap();
    }

    fn visit_traces(
        &self,
        traces: &[(TraceId, u64)],
        visit: impl FnMut(usize, Location, BufferedKind, &[u8]),
    ) {
        let items = traces
            .iter()
            .enumerate()
            .flat_map(|(at, (trace, upto))| indexed(trace, *upto).into_iter().map(move |l| (at, l)))
            .collect();
        self.visit_items(items, visit).unwrap();
    }

    fn read_trace(
        &self,
        trace: &TraceId,
        upto: u64,
    ) -> Result<Vec<(BufferedKind, Vec<u8>)>, StorageError> {
        self.read_items(&indexed(trace, upto))
    }

    fn forget_trace(&self, forgetting: &mut Forgetting, trace: &TraceId, upto: u64) {
        forgetting.forget(take(trace, |l| l.key().seq < upto));
    }

    fn forget_items(&self, forgetting: &mut Forgetting, trace: &TraceId, keys: &[ItemKey]) {
        forgetting.forget(take(trace, |l| keys.contains(&l.key())));
    }

    fn buffered_traces(&self) -> Vec<TraceId> {
        INDEX.with_borrow(|index| index.keys().copied().collect())
    }
}

/// Keys of the buffer column family, in order.
fn buffer_keys(storage: &Storage) -> Vec<Box<[u8]>> {
    storage
        .db()
        .iterator_cf(storage.cf(CF_BUFFER), IteratorMode::Start)
        .map(|item| item.unwrap().0)
        .collect()
}

/// Writes one request holding `items` and indexes it, as the engine does.
fn buffer(storage: &Storage, items: &[(TraceId, BufferedKind, &[u8])]) {
    let mut value = RequestValue::default();
    for (trace, kind, payload) in items {
        value.push_encoded(*trace, *kind, payload);
    }
    write_value(storage, value);
}

/// Writes `value` as one request and indexes its items, as the engine does.
fn write_value(storage: &Storage, value: RequestValue) {
    let mut batch = WriteBatch::default();
    let staged = storage.stage_request(&mut batch, value);
    storage.write(batch).unwrap();
    storage.committed(staged);
}

/// Every item a restart's scan finds, accepting all of them.
fn scan_all(storage: &Storage) -> Vec<(TraceId, BufferedKind, Vec<u8>)> {
    let mut seen = Vec::new();
    storage
        .scan_indexed(|t, _, k, p| {
            seen.push((t, k, p.to_vec()));
            true
        })
        .unwrap();
    seen
}

fn forget(storage: &Storage, trace: &TraceId, upto: u64) {
    let mut forgetting = Forgetting::default();
    storage.forget_trace(&mut forgetting, trace, upto);
    storage
        .write_forgetting(WriteBatch::default(), forgetting)
        .unwrap();
}

#[test]
fn a_small_request_is_one_value_and_items_read_back_per_trace_below_the_watermark() {
    let dir = tempfile::tempdir().unwrap();
    let storage = Storage::open(dir.path(), false).unwrap();
    let (a, b) = ([1u8; 16], [2u8; 16]);
    buffer(
        &storage,
        &[
            (a, BufferedKind::Spans, b"one"),
            (b, BufferedKind::Logs, b"other"),
            (a, BufferedKind::Logs, b"two"),
        ],
    );
    assert_eq!(
        buffer_keys(&storage).len(),
        1,
        "one put for a request within a chunk"
    );
    let watermark = storage.next_seq();
    assert_eq!(
        storage.read_trace(&a, watermark).unwrap(),
        vec![
            (BufferedKind::Spans, b"one".to_vec()),
            (BufferedKind::Logs, b"two".to_vec())
        ]
    );
    buffer(&storage, &[(a, BufferedKind::Spans, b"after")]);
    assert_eq!(
        storage.read_trace(&a, watermark).unwrap().len(),
        2,
        "the later item is beyond the watermark"
    );
    forget(&storage, &a, watermark);
    assert_eq!(
        storage.read_trace(&a, u64::MAX).unwrap(),
        vec![(BufferedKind::Spans, b"after".to_vec())]
    );
    assert_eq!(storage.read_trace(&b, u64::MAX).unwrap().len(), 1);
    assert_eq!(
        buffer_keys(&storage).len(),
        3,
        "the first request stays (b is in it) with its forgotten offsets; the second request"
    );
    forget(&storage, &b, u64::MAX);
    forget(&storage, &a, u64::MAX);
    assert!(
        buffer_keys(&storage).is_empty(),
        "requests whose items are all forgotten are deleted"
    );
    assert!(storage.buffered_traces().is_empty());
}

#[test]
fn a_restart_brings_back_exactly_the_items_not_forgotten() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, c) = ([1u8; 16], [2u8; 16], [3u8; 16]);
    let first_seq;
    {
        let storage = Storage::open(dir.path(), true).unwrap();
        first_seq = storage.next_seq();
        buffer(
            &storage,
            &[
                (a, BufferedKind::Spans, b"a1"),
                (b, BufferedKind::Spans, b"b1"),
            ],
        );
        buffer(&storage, &[(c, BufferedKind::Spans, b"c1")]);
        buffer(
            &storage,
            &[
                (a, BufferedKind::Logs, b"a2"),
                (c, BufferedKind::Spans, b"c2"),
            ],
        );
        forget(&storage, &a, u64::MAX);
        forget(&storage, &c, u64::MAX);
    }
    let storage = Storage::open(dir.path(), true).unwrap();
    assert!(storage.next_seq() > first_seq);
    let seen = scan_all(&storage);
    assert_eq!(seen, vec![(b, BufferedKind::Spans, b"b1".to_vec())]);
    assert_eq!(storage.buffered_traces(), vec![b]);
    assert_eq!(
        storage.read_trace(&b, u64::MAX).unwrap(),
        vec![(BufferedKind::Spans, b"b1".to_vec())]
    );
    assert_eq!(
        buffer_keys(&storage).len(),
        2,
        "the requests with nothing left went at the restart or before"
    );
    forget(&storage, &b, u64::MAX);
    assert!(buffer_keys(&storage).is_empty());
}

#[test]
fn items_the_scan_refuses_are_forgotten_and_unreadable_values_quarantined() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = ([1u8; 16], [2u8; 16]);
    {
        let storage = Storage::open(dir.path(), true).unwrap();
        buffer(
            &storage,
            &[
                (a, BufferedKind::Spans, b"bad"),
                (b, BufferedKind::Spans, b"good"),
            ],
        );
        let mut batch = WriteBatch::default();
        batch.put_cf(storage.cf(CF_BUFFER), 7u64.to_be_bytes(), [9u8, 1, 2]);
        storage.write(batch).unwrap();
    }
    for _ in 0..2 {
        let storage = Storage::open(dir.path(), true).unwrap();
        let mut seen = Vec::new();
        storage
            .scan_indexed(|t, _, _, p| {
                seen.push(t);
                p != b"bad"
            })
            .unwrap();
        assert_eq!(seen.last(), Some(&b), "the good item is recovered");
        assert_eq!(storage.buffered_traces(), vec![b]);
        let quarantined = storage.quarantined().unwrap();
        assert_eq!(quarantined.len(), 1, "the unframed value, once");
        assert_eq!(quarantined[0].key, 7u64.to_be_bytes());
        assert_eq!(quarantined[0].value, vec![9, 1, 2]);
    }
}

#[test]
fn handed_off_items_are_forgotten_one_by_one() {
    let dir = tempfile::tempdir().unwrap();
    let storage = Storage::open(dir.path(), false).unwrap();
    let a = [1u8; 16];
    buffer(
        &storage,
        &[
            (a, BufferedKind::Spans, b"s"),
            (a, BufferedKind::Logs, b"l"),
        ],
    );
    let mut spans = Vec::new();
    storage.visit_indexed(&a, u64::MAX, |location, kind, _| {
        if kind == BufferedKind::Spans {
            spans.push(location.key());
        }
    });
    let mut forgetting = Forgetting::default();
    storage.forget_items(&mut forgetting, &a, &spans);
    storage
        .write_forgetting(WriteBatch::default(), forgetting)
        .unwrap();
    assert_eq!(
        storage.read_trace(&a, u64::MAX).unwrap(),
        vec![(BufferedKind::Logs, b"l".to_vec())]
    );
}

#[test]
fn requests_dying_together_go_with_one_range_and_live_neighbours_stay() {
    let dir = tempfile::tempdir().unwrap();
    let storage = Storage::open(dir.path(), false).unwrap();
    let traces: Vec<TraceId> = (1..=5u8).map(|i| [i; 16]).collect();
    for trace in &traces {
        buffer(&storage, &[(*trace, BufferedKind::Spans, b"x")]);
    }
    let mut forgetting = Forgetting::default();
    for trace in [&traces[0], &traces[1], &traces[3]] {
        storage.forget_trace(&mut forgetting, trace, u64::MAX);
    }
    storage
        .write_forgetting(WriteBatch::default(), forgetting)
        .unwrap();
    assert_eq!(buffer_keys(&storage).len(), 2, "requests 3 and 5 stay");
    let mut left = storage.buffered_traces();
    left.sort();
    assert_eq!(left, vec![traces[2], traces[4]]);
    assert_eq!(storage.read_trace(&traces[2], u64::MAX).unwrap().len(), 1);
}

#[test]
fn a_request_staged_but_not_yet_written_is_out_of_reach_of_range_deletes_around_it() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, c) = ([1u8; 16], [2u8; 16], [3u8; 16]);
    {
        let storage = Storage::open(dir.path(), false).unwrap();
        buffer(&storage, &[(a, BufferedKind::Spans, b"a")]);
        let mut value = RequestValue::default();
        value.push_encoded(b, BufferedKind::Spans, b"b");
        let mut pending = WriteBatch::default();
        let staged = storage.stage_request(&mut pending, value);
        buffer(&storage, &[(c, BufferedKind::Spans, b"c")]);
        // The requests on both sides die while the middle one is still being written.
        let mut forgetting = Forgetting::default();
        storage.forget_trace(&mut forgetting, &a, u64::MAX);
        storage.forget_trace(&mut forgetting, &c, u64::MAX);
        storage
            .write_forgetting(WriteBatch::default(), forgetting)
            .unwrap();
        storage.write(pending).unwrap();
        storage.committed(staged);
        assert_eq!(
            storage.read_trace(&b, u64::MAX).unwrap(),
            vec![(BufferedKind::Spans, b"b".to_vec())]
        );
    }
    let storage = Storage::open(dir.path(), false).unwrap();
    assert_eq!(
        scan_all(&storage),
        vec![(b, BufferedKind::Spans, b"b".to_vec())]
    );
}

#[test]
fn requests_written_while_others_are_forgotten_keep_every_item_not_forgotten() {
    // Writers stage and write requests while forgetting most of what they wrote before,
    // concurrently: the forgetting writes no longer hold the table of live requests, so
    // this is where a range delete reaching a request in flight would show.
    let dir = tempfile::tempdir().unwrap();
    let threads = 4u8;
    let requests = 150u16;
    let kept: Vec<(TraceId, Location)> = {
        let storage = Storage::open(dir.path(), false).unwrap();
        let kept = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..threads)
                .map(|t| {
                    let storage = &storage;
                    scope.spawn(move || {
                        let mut kept = Vec::new();
                        for i in 0..requests {
                            let [hi, lo] = i.to_be_bytes();
                            let gone = [t, hi, lo, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
                            let stays = [t, hi, lo, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
                            let mut value = RequestValue::default();
                            value.push_encoded(gone, BufferedKind::Spans, &gone);
                            value.push_encoded(stays, BufferedKind::Spans, &stays);
                            let mut batch = WriteBatch::default();
                            let staged = storage.stage_request(&mut batch, value);
                            let staged = storage.write_staged(batch, Some(staged)).unwrap();
                            let staged = staged.unwrap();
                            let mut forgetting = Forgetting::default();
                            forgetting.forget([staged.location(0)]);
                            if i % 3 == 0 {
                                kept.push((stays, staged.location(1)));
                            } else {
                                forgetting.forget([staged.location(1)]);
                            }
                            storage
                                .write_forgetting(WriteBatch::default(), forgetting)
                                .unwrap();
                        }
                        kept
                    })
                })
                .collect();
            workers
                .into_iter()
                .flat_map(|w| w.join().unwrap())
                .collect::<Vec<_>>()
        });
        for (trace, location) in &kept {
            let mut read = Vec::new();
            storage
                .visit_trace(&[*location], |_, _, payload| read.push(payload.to_vec()))
                .unwrap();
            assert_eq!(read, vec![trace.to_vec()]);
        }
        kept
    };
    let storage = Storage::open(dir.path(), false).unwrap();
    let mut found: Vec<TraceId> = scan_all(&storage).into_iter().map(|(t, _, _)| t).collect();
    found.sort();
    let mut expected: Vec<TraceId> = kept.iter().map(|(t, _)| *t).collect();
    expected.sort();
    assert_eq!(
        expected.len(),
        threads as usize * requests.div_ceil(3) as usize
    );
    assert_eq!(found, expected);
}

#[test]
fn items_of_the_previous_layout_move_into_request_values_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = ([1u8; 16], [2u8; 16]);
    {
        let storage = Storage::open(dir.path(), true).unwrap();
        let mut batch = WriteBatch::default();
        for (trace, seq, kind, payload) in [
            (a, 1u64, BufferedKind::Spans, &b"a1"[..]),
            (a, 3, BufferedKind::Logs, b"a2"),
            (b, 2, BufferedKind::Spans, b"bad"),
        ] {
            let mut key = trace.to_vec();
            key.extend_from_slice(&seq.to_be_bytes());
            let mut value = vec![kind as u8];
            value.extend_from_slice(payload);
            batch.put_cf(storage.cf(CF_BUFFER), key, value);
        }
        storage.write(batch).unwrap();
    }
    for restart in 0..2 {
        let storage = Storage::open(dir.path(), true).unwrap();
        let mut seen = Vec::new();
        storage
            .scan_indexed(|t, _, k, p| {
                seen.push((t, k, p.to_vec()));
                p != b"bad"
            })
            .unwrap();
        let expected_first = vec![
            (a, BufferedKind::Spans, b"a1".to_vec()),
            (a, BufferedKind::Logs, b"a2".to_vec()),
        ];
        if restart == 0 {
            assert_eq!(seen[..2], expected_first[..]);
            assert_eq!(seen.len(), 3, "the refused item was visited too");
        } else {
            assert_eq!(seen, expected_first, "the refused item is gone");
        }
        assert_eq!(storage.buffered_traces(), vec![a]);
        assert!(
            buffer_keys(&storage).iter().all(|k| k.len() != 24),
            "no key of the previous layout is left"
        );
    }
}

/// `.blob` files in the database directory.
fn blob_files(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "blob")
        })
        .count()
}

#[test]
fn flushed_request_values_live_in_blob_files_that_go_once_their_requests_are_forgotten() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = ([1u8; 16], [2u8; 16]);
    let big_a = vec![b'a'; 64 * 1024];
    let big_b = vec![b'b'; 64 * 1024];
    {
        let storage = Storage::open(dir.path(), false).unwrap();
        buffer(&storage, &[(a, BufferedKind::Spans, &big_a)]);
        buffer(&storage, &[(b, BufferedKind::Spans, &big_b)]);
        storage.db().flush_cf(storage.cf(CF_BUFFER)).unwrap();
        assert_eq!(
            blob_files(dir.path()),
            1,
            "flushed values went to a blob file"
        );
        assert_eq!(
            storage.read_trace(&a, u64::MAX).unwrap(),
            vec![(BufferedKind::Spans, big_a.clone())],
            "a value is read back from its blob file"
        );
    }
    let storage = Storage::open(dir.path(), false).unwrap();
    let mut seen = Vec::new();
    storage
        .scan_indexed(|t, _, _, p| {
            seen.push((t, p.len()));
            true
        })
        .unwrap();
    assert_eq!(seen, vec![(a, big_a.len()), (b, big_b.len())]);
    let held = storage.approximate_bytes();
    assert!(held >= 128 * 1024, "blob bytes are counted: {held}");
    forget(&storage, &a, u64::MAX);
    forget(&storage, &b, u64::MAX);
    storage.db().flush_cf(storage.cf(CF_BUFFER)).unwrap();
    storage
        .db()
        .compact_range_cf(storage.cf(CF_BUFFER), None::<&[u8]>, None::<&[u8]>);
    assert_eq!(
        blob_files(dir.path()),
        0,
        "a blob file whose values are all deleted is removed by compaction"
    );
    assert!(storage.approximate_bytes() < 64 * 1024);
}

#[test]
fn a_request_past_a_chunk_is_stored_in_chunks_and_an_item_is_read_from_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, c) = ([1u8; 16], [2u8; 16], [3u8; 16]);
    let big = |byte: u8| vec![byte; 20 * 1024];
    {
        let storage = Storage::open(dir.path(), false).unwrap();
        buffer(
            &storage,
            &[
                (a, BufferedKind::Spans, &big(b'a')),
                (b, BufferedKind::Spans, &big(b'b')),
                (c, BufferedKind::Logs, &big(b'c')),
            ],
        );
        let keys = buffer_keys(&storage);
        assert_eq!(
            keys.iter().map(|k| k.len()).collect::<Vec<_>>(),
            vec![CHUNK_KEY_LEN, CHUNK_KEY_LEN],
            "a and b fill the first chunk past {CHUNK_BYTES} bytes, c starts the second"
        );
        forget(&storage, &b, u64::MAX);
    }
    let storage = Storage::open(dir.path(), false).unwrap();
    let seen = scan_all(&storage);
    assert_eq!(
        seen,
        vec![
            (a, BufferedKind::Spans, big(b'a')),
            (c, BufferedKind::Logs, big(b'c'))
        ],
        "a restart finds the items of both chunks but the forgotten one"
    );
    let keys = buffer_keys(&storage);
    let first = keys.iter().find(|k| k.len() == CHUNK_KEY_LEN).unwrap();
    let mut without_first = WriteBatch::default();
    without_first.delete_cf(storage.cf(CF_BUFFER), first);
    storage.write(without_first).unwrap();
    assert_eq!(
        storage.read_trace(&c, u64::MAX).unwrap(),
        vec![(BufferedKind::Logs, big(b'c'))],
        "c is read from its own chunk alone"
    );
    assert!(storage.read_trace(&a, u64::MAX).unwrap().is_empty());
    forget(&storage, &a, u64::MAX);
    forget(&storage, &c, u64::MAX);
    assert!(
        buffer_keys(&storage).is_empty(),
        "a request's chunks all go with its last item"
    );
}

#[test]
fn requests_of_the_previous_one_value_layout_are_rewritten_in_chunks_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = ([1u8; 16], [2u8; 16]);
    {
        let storage = Storage::open(dir.path(), true).unwrap();
        let mut value = Vec::new();
        let mut offsets = Vec::new();
        for (trace, kind, payload) in [
            (a, BufferedKind::Spans, &b"gone"[..]),
            (b, BufferedKind::Logs, b"kept"),
            (a, BufferedKind::Spans, b"also kept"),
        ] {
            value.push(kind as u8);
            value.extend_from_slice(&trace);
            value.extend_from_slice(&(payload.len() as u32).to_le_bytes());
            offsets.push(value.len() as u32);
            value.extend_from_slice(payload);
        }
        let mut batch = WriteBatch::default();
        let cf = storage.cf(CF_BUFFER);
        batch.put_cf(cf, 5u64.to_be_bytes(), value);
        batch.put_cf(cf, dead_key(5), encode_offsets(&offsets[..1]));
        storage.write(batch).unwrap();
    }
    for _ in 0..2 {
        let storage = Storage::open(dir.path(), true).unwrap();
        let seen = scan_all(&storage);
        assert_eq!(
            seen,
            vec![
                (b, BufferedKind::Logs, b"kept".to_vec()),
                (a, BufferedKind::Spans, b"also kept".to_vec())
            ],
            "the forgotten item stays forgotten"
        );
        assert_eq!(
            storage.read_trace(&a, u64::MAX).unwrap(),
            vec![(BufferedKind::Spans, b"also kept".to_vec())]
        );
        assert!(
            buffer_keys(&storage)
                .iter()
                .all(|k| k.len() == CHUNK_KEY_LEN && k[8] == CHUNK_SUFFIX),
            "only chunks are left"
        );
    }
}

#[test]
fn traces_read_together_get_their_own_items_in_arrival_order() {
    let dir = tempfile::tempdir().unwrap();
    let storage = Storage::open(dir.path(), false).unwrap();
    let (a, b, c) = ([1u8; 16], [2u8; 16], [3u8; 16]);
    buffer(
        &storage,
        &[
            (a, BufferedKind::Spans, b"a1"),
            (b, BufferedKind::Spans, b"b1"),
            (c, BufferedKind::Spans, b"c1"),
        ],
    );
    let watermark = storage.next_seq();
    buffer(
        &storage,
        &[
            (b, BufferedKind::Logs, b"b2"),
            (a, BufferedKind::Spans, b"a2"),
        ],
    );
    let mut seen: Vec<Vec<Vec<u8>>> = vec![Vec::new(); 2];
    storage.visit_traces(&[(b, u64::MAX), (a, watermark)], |index, _, _, payload| {
        seen[index].push(payload.to_vec())
    });
    assert_eq!(
        seen,
        vec![vec![b"b1".to_vec(), b"b2".to_vec()], vec![b"a1".to_vec()],],
        "each trace's items in order, below its own bound; c untouched"
    );
}

#[test]
fn the_other_column_families_switch_memtables_at_their_smaller_size() {
    let dir = tempfile::tempdir().unwrap();
    let storage = Storage::open(dir.path(), false).unwrap();
    let value = vec![7u8; 1 << 20];
    // More than SMALL_MEMTABLE_BYTES and less than RocksDB's default of 64 MiB.
    for i in 0u32..40 {
        let mut batch = WriteBatch::default();
        batch.put_cf(storage.cf(CF_HOLD), i.to_be_bytes(), &value);
        storage.write(batch).unwrap();
    }
    let active = storage
        .db()
        .property_int_value_cf(storage.cf(CF_HOLD), "rocksdb.cur-size-active-mem-table")
        .unwrap()
        .unwrap();
    assert!(
        active < SMALL_MEMTABLE_BYTES as u64,
        "the active memtable holds {active} bytes after 40 MiB"
    );
}

#[test]
fn trimming_lets_the_wal_go_when_only_the_small_column_families_held_it() {
    let dir = tempfile::tempdir().unwrap();
    let storage = Storage::open(dir.path(), false).unwrap();
    let db = storage.db();
    // One export-queue record, then the buffer's traffic, flushed by the buffer alone: the
    // queue's unflushed record keeps the WAL file holding all of it.
    db.put_cf(storage.cf(CF_QUEUE), b"q", b"kept").unwrap();
    let value = vec![7u8; 64 * 1024];
    for i in 0u32..64 {
        db.put_cf(storage.cf(CF_BUFFER), i.to_be_bytes(), &value)
            .unwrap();
    }
    db.flush_cf(storage.cf(CF_BUFFER)).unwrap();
    let held = storage.wal_bytes();
    assert!(held >= 4 << 20, "the queue holds the WAL: {held} bytes");
    assert!(
        !storage.trim_wal(u64::MAX).unwrap(),
        "below the limit: nothing"
    );
    assert_eq!(storage.wal_bytes(), held);

    assert!(storage.trim_wal(1 << 20).unwrap());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while storage.wal_bytes() >= 1 << 20 {
        assert!(
            std::time::Instant::now() < deadline,
            "the WAL still holds {} bytes",
            storage.wal_bytes()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // Flushed, not lost: the record reads back, also after a restart.
    assert_eq!(
        db.get_cf(storage.cf(CF_QUEUE), b"q").unwrap().as_deref(),
        Some(&b"kept"[..])
    );
    drop(storage);
    let storage = Storage::open(dir.path(), false).unwrap();
    assert_eq!(
        storage
            .db()
            .get_cf(storage.cf(CF_QUEUE), b"q")
            .unwrap()
            .as_deref(),
        Some(&b"kept"[..])
    );
}

#[test]
fn the_wal_limit_leaves_room_for_the_buffers_own_memtables() {
    let dir = tempfile::tempdir().unwrap();
    let default = Storage::open(&dir.path().join("a"), false).unwrap();
    assert_eq!(default.wal_trim_bytes, 256 << 20);
    assert!(
        !default.trim_wal_to_limit().unwrap(),
        "a fresh database is far below it"
    );
    let large = Storage::open_with(&dir.path().join("b"), false, 1 << 30).unwrap();
    assert_eq!(large.wal_trim_bytes, 2 << 30);
}

#[test]
fn blob_gc_takes_the_larger_cutoff_above_half_garbage_and_gives_it_up_below_a_quarter() {
    assert!(
        !blob_gc_collecting(0, 0, false),
        "no blob files, nothing to collect"
    );
    assert!(!blob_gc_collecting(0, 0, true));
    assert!(!blob_gc_collecting(40, 100, false), "mostly live");
    assert!(
        !blob_gc_collecting(50, 100, false),
        "half is not above half"
    );
    assert!(blob_gc_collecting(51, 100, false), "mostly garbage");
    assert!(
        blob_gc_collecting(40, 100, true),
        "keeps collecting down to a quarter"
    );
    assert!(!blob_gc_collecting(25, 100, true), "stops at a quarter");
}

#[test]
fn blob_files_pinned_by_long_lived_values_go_once_garbage_dominates() {
    let dir = tempfile::tempdir().unwrap();
    let storage = Storage::open(dir.path(), false).unwrap();
    let dead = vec![b'd'; 64 * 1024];
    let live = vec![b'l'; 5 * 1024];
    let files = 24u8;
    // Each flush makes one blob file: a request forgotten soon, and one whose value lives on.
    for i in 0..files {
        buffer(&storage, &[([i; 16], BufferedKind::Spans, &dead)]);
        buffer(&storage, &[([100 + i; 16], BufferedKind::Spans, &live)]);
        storage.db().flush_cf(storage.cf(CF_BUFFER)).unwrap();
    }
    for i in 0..files {
        forget(&storage, &[i; 16], u64::MAX);
    }
    storage.db().flush_cf(storage.cf(CF_BUFFER)).unwrap();
    let mut full = rocksdb::CompactOptions::default();
    full.set_bottommost_level_compaction(rocksdb::BottommostLevelCompaction::Force);
    let compact = || {
        storage.db().compact_range_cf_opt(
            storage.cf(CF_BUFFER),
            None::<&[u8]>,
            None::<&[u8]>,
            &full,
        )
    };
    // Compaction drops the forgotten requests and counts their blobs as garbage; at the
    // small cutoff it moves the live value of the oldest file only, into a new file.
    compact();
    let pinned = blob_files(dir.path());
    assert_eq!(
        pinned,
        usize::from(files),
        "each file is pinned by one live value"
    );
    compact();
    assert_eq!(
        blob_files(dir.path()),
        pinned,
        "while the cutoff is small, compacting again frees no file"
    );
    assert!(
        storage.tune_blob_gc().unwrap(),
        "the files are mostly garbage"
    );
    compact();
    let after = blob_files(dir.path());
    assert!(
        after <= pinned - 5,
        "the oldest quarter's live values moved and its files went: {pinned} -> {after}"
    );
    for i in 0..files {
        assert_eq!(
            storage.read_trace(&[100 + i; 16], u64::MAX).unwrap(),
            vec![(BufferedKind::Spans, live.clone())],
            "a moved value reads back"
        );
    }
}

/// A `ResourceSpans` of one span of trace `trace` under service `service` (no resource
/// when empty), with a resource of a few hundred bytes as SDKs send.
fn resource_spans(service: &str, trace: u8, span: u8) -> ResourceSpans {
    use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::{ScopeSpans, Span};
    let attribute = |key: &str, value: String| KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value)),
        }),
        ..KeyValue::default()
    };
    ResourceSpans {
        resource: (!service.is_empty()).then(|| Resource {
            attributes: vec![
                attribute("service.name", service.into()),
                attribute("host.name", format!("{service}-host-0123456789abcdef")),
                attribute("telemetry.sdk.version", "1.38.0".repeat(20)),
            ],
            ..Resource::default()
        }),
        scope_spans: vec![ScopeSpans {
            spans: vec![Span {
                trace_id: vec![trace; 16],
                span_id: vec![span; 8],
                name: format!("span {span} ").repeat(10),
                ..Span::default()
            }],
            ..ScopeSpans::default()
        }],
        schema_url: String::new(),
    }
}

/// Pushes `trace`'s groups into `value` with their resources shared.
fn push_groups(value: &mut RequestValue, trace: TraceId, groups: &[ResourceSpans]) {
    let resources: Vec<Option<Vec<u8>>> = groups
        .iter()
        .map(|rs| rs.resource.as_ref().map(prost::Message::encode_to_vec))
        .collect();
    let rests: Vec<Vec<u8>> = groups
        .iter()
        .map(|rs| {
            ResourceSpans {
                resource: None,
                ..rs.clone()
            }
            .encode_to_vec()
        })
        .collect();
    let shared: Vec<SharedGroup<'_>> = resources
        .iter()
        .zip(&rests)
        .map(|(resource, rest)| SharedGroup {
            resource: resource.as_deref(),
            rest_len: rest.len(),
        })
        .collect();
    value.push_shared(trace, &shared, |at, buf| buf.extend_from_slice(&rests[at]));
}

/// What a shared-resource item reads back as: its groups as a request body.
fn whole(groups: &[ResourceSpans]) -> Vec<u8> {
    ExportTraceServiceRequest {
        resource_spans: groups.to_vec(),
    }
    .encode_to_vec()
}

/// How many times `needle` occurs in `haystack`.
fn occurrences(haystack: &[u8], needle: &[u8]) -> usize {
    haystack
        .windows(needle.len())
        .filter(|w| *w == needle)
        .count()
}

#[test]
fn span_items_store_each_resource_once_per_chunk_and_read_back_whole() {
    let dir = tempfile::tempdir().unwrap();
    // 600 traces: most under service "a", every third also under "b", every seventh
    // twice under "a", every tenth under no resource first: several chunks.
    let traces: Vec<(TraceId, Vec<ResourceSpans>)> = (0..600u16)
        .map(|n| {
            let trace = [
                (n % 251) as u8,
                (n / 251) as u8,
                7,
                7,
                7,
                7,
                7,
                7,
                7,
                7,
                7,
                7,
                7,
                7,
                7,
                7,
            ];
            let mut groups = vec![resource_spans(if n % 10 == 0 { "" } else { "a" }, 1, 1)];
            if n % 3 == 0 {
                groups.push(resource_spans("b", 1, 2));
            }
            if n % 7 == 0 {
                // Two entries of one request with equal resources: one resource frame.
                groups.push(resource_spans("a", 1, 3));
            }
            (trace, groups)
        })
        .collect();
    let service_a = resource_spans("a", 1, 1).resource.unwrap().encode_to_vec();
    let mut value = RequestValue::default();
    for (trace, groups) in &traces {
        push_groups(&mut value, *trace, groups);
    }
    // A copy keeping every other item reads back the same (the engine's filter for
    // traces decided while their request arrived).
    let keep: Vec<bool> = (0..traces.len()).map(|n| n % 2 == 0).collect();
    let filtered = value.filtered(&keep);
    for (n, (_, groups)) in traces.iter().enumerate() {
        assert_eq!(
            value.item(n),
            (BufferedKind::TraceSpans, whole(groups).into())
        );
    }
    for (n, (_, groups)) in traces.iter().step_by(2).enumerate() {
        assert_eq!(filtered.item(n).1, whole(groups));
    }
    {
        let storage = Storage::open(dir.path(), false).unwrap();
        write_value(&storage, value);
        let chunks: Vec<Box<[u8]>> = storage
            .db()
            .iterator_cf(storage.cf(CF_BUFFER), IteratorMode::Start)
            .map(|item| item.unwrap().1)
            .collect();
        assert!(chunks.len() > 1, "several chunks: {}", chunks.len());
        for chunk in &chunks {
            assert_eq!(
                occurrences(chunk, &service_a),
                1,
                "service a's resource is stored once in each chunk"
            );
        }
        let stored: usize = chunks.iter().map(|c| c.len()).sum();
        let repeated: usize = traces.iter().map(|(_, g)| whole(g).len() + 21).sum();
        assert!(
            stored * 2 < repeated,
            "{stored} bytes stored against {repeated} with every resource repeated"
        );
        for (trace, groups) in &traces {
            assert_eq!(
                storage.read_trace(trace, u64::MAX).unwrap(),
                vec![(BufferedKind::TraceSpans, whole(groups))]
            );
        }
        forget(&storage, &traces[0].0, u64::MAX);
    }
    let storage = Storage::open(dir.path(), false).unwrap();
    let seen = scan_all(&storage);
    let expected: Vec<(TraceId, BufferedKind, Vec<u8>)> = traces[1..]
        .iter()
        .map(|(trace, groups)| (*trace, BufferedKind::TraceSpans, whole(groups)))
        .collect();
    assert_eq!(
        seen, expected,
        "a restart finds every item not forgotten, and no resource as an item"
    );
    for (trace, _) in &traces[1..] {
        forget(&storage, trace, u64::MAX);
    }
    assert!(
        buffer_keys(&storage).is_empty(),
        "the request goes with its last item, resources and all"
    );
}

#[test]
fn a_trace_whose_resources_outgrow_a_chunk_is_stored_whole() {
    let dir = tempfile::tempdir().unwrap();
    let storage = Storage::open(dir.path(), false).unwrap();
    let (small, huge) = ([1u8; 16], [2u8; 16]);
    let mut big = resource_spans("big", 2, 1);
    big.resource.as_mut().unwrap().attributes[0].key = "k".repeat(CHUNK_BYTES + 1);
    let mut value = RequestValue::default();
    push_groups(&mut value, small, &[resource_spans("a", 1, 1)]);
    push_groups(&mut value, huge, &[big.clone()]);
    write_value(&storage, value);
    assert_eq!(
        storage.read_trace(&huge, u64::MAX).unwrap(),
        vec![(BufferedKind::TraceSpans, whole(&[big]))]
    );
    assert_eq!(
        storage.read_trace(&small, u64::MAX).unwrap(),
        vec![(
            BufferedKind::TraceSpans,
            whole(&[resource_spans("a", 1, 1)])
        )]
    );
}

#[test]
fn an_item_naming_a_resource_its_chunk_lacks_is_forgotten_at_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = ([1u8; 16], [2u8; 16]);
    {
        let storage = Storage::open(dir.path(), false).unwrap();
        buffer(&storage, &[(b, BufferedKind::Spans, b"good")]);
        // An item framed as naming the resource at offset 100 of a chunk with none.
        let mut chunk = vec![0x11];
        chunk.extend_from_slice(&a);
        chunk.extend_from_slice(&9u32.to_le_bytes());
        chunk.extend_from_slice(&100u16.to_le_bytes());
        chunk.extend_from_slice(&3u32.to_le_bytes());
        chunk.extend_from_slice(b"abc");
        let mut key = 1u64.to_be_bytes().to_vec();
        key.push(CHUNK_SUFFIX);
        key.extend_from_slice(&0u16.to_be_bytes());
        let mut batch = WriteBatch::default();
        batch.put_cf(storage.cf(CF_BUFFER), key, chunk);
        storage.write(batch).unwrap();
    }
    let storage = Storage::open(dir.path(), false).unwrap();
    assert_eq!(
        scan_all(&storage),
        vec![(b, BufferedKind::Spans, b"good".to_vec())],
        "the unreadable item is not visited"
    );
    assert_eq!(storage.buffered_traces(), vec![b]);
    assert!(storage.read_trace(&a, u64::MAX).unwrap().is_empty());
}
