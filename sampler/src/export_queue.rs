//! The disk-backed export queue: what has been decided (kept traces) or passes through
//! (logs without a trace id, metrics) waits here, in RocksDB, until its exporter delivers it.
//!
//! **Layout** (column family [`CF_QUEUE`]): one FIFO per exporter ("lane").
//! Key = lane id (1 byte) ++ sequence (8 bytes, big endian, from [`Storage::next_seq`]).
//! Value = signal tag (1 byte) ++ item count (4 bytes, big endian) ++ the protobuf
//! `Export*ServiceRequest`. Lane ids derive from the exporter kind (`otlp` = 1,
//! `otlphttp` = 2, `file` = 3), not from the position in the config, so a queue written
//! before a restart is sent to the same exporter after it even if the config gained or lost
//! another exporter. Entries of a lane whose exporter is no longer configured are kept and
//! reported at open.
//!
//! **Bound.** Each lane counts its bytes (keys + values), rebuilt by a scan at open.
//! [`ExportQueues::is_full`] is the admission check receivers use to throttle clients once
//! any lane reaches `exporter.queue.max_bytes`. The decider does not ask: a kept trace must
//! never be dropped, so staging always succeeds and a lane may overshoot the bound by what
//! is decided while receivers are already refusing new data.
//!
//! **Sending.** One sender task per lane reads the oldest entries, merges consecutive
//! entries of the same signal into one request (protobuf messages concatenate into their
//! merge, so this is a byte append) up to [`MAX_MERGE_BYTES`] / [`MAX_MERGE_ITEMS`], and
//! sends it. Success or a permanent failure deletes the entries (the latter counted as
//! `outcome="rejected"`); a retryable failure backs off exponentially with jitter
//! ([`backoff_delay`]; the server's RetryInfo / `Retry-After` overrides) and retries the
//! same data until it goes through. Delivery is at least once: a crash between a
//! successful send and the delete sends that batch again after restart.
//!
//! Entries are deleted one key at a time, never by range: sequence numbers are taken when
//! a write is staged, so an entry with a smaller sequence can become visible after the
//! sender has read past it, and a range delete would lose it.

use std::collections::BTreeSet;
use std::future::Future;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use otel_tail_shared::config::{ExporterConfig, RetryConfig};
use otel_tail_shared::exporter::{ExportError, ExportRequest, Exporter};
use otel_tail_shared::otlp::Signal;
use otel_tail_shared::telemetry::names;
use prost::Message;
use rocksdb::{IteratorMode, ReadOptions, WriteBatch};
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::storage::{CF_QUEUE, Storage, StorageError, Store};

/// Largest merged request, in protobuf bytes (a single larger entry is still sent alone).
pub const MAX_MERGE_BYTES: usize = 4 * 1024 * 1024;
/// Most items (spans, log records, data points) in one merged request.
pub const MAX_MERGE_ITEMS: u64 = 8192;
/// Deleted entries after which a lane compacts its consumed key range, so the tombstones
/// of a busy queue do not slow down every read of its head.
const COMPACT_AFTER_DELETES: u64 = 16_384;
/// Lane key: lane id ++ sequence.
const KEY_LEN: usize = 9;
/// Value header: signal tag ++ item count.
const VALUE_HEADER_LEN: usize = 5;

/// The export queues of every configured exporter and the tasks that drain them.
pub struct ExportQueues {
    storage: Arc<Storage>,
    lanes: Vec<Lane>,
    max_bytes: u64,
    retry: RetryConfig,
    /// Sequences staged and not yet committed: an entry staged before another may be
    /// written after it, so a lane's read cursor never passes the lowest of these. (A
    /// write that fails leaves its sequence here; reads then start no later than it.)
    pending: Mutex<BTreeSet<u64>>,
}

/// One exporter's FIFO.
struct Lane {
    /// First key byte of this lane's entries.
    id: u8,
    exporter: Exporter,
    /// Bytes of keys and values queued (committed) in this lane. Signed because a sender
    /// may delete an entry before the writer's [`ExportQueues::committed`] has counted it;
    /// read through [`Lane::queued_bytes`].
    bytes: AtomicI64,
    /// Wakes the sender when entries are committed.
    wake: Notify,
    /// Items delivered (accepted by the downstream) since open.
    exported_items: AtomicU64,
    /// Items deleted after a permanent failure since open.
    rejected_items: AtomicU64,
    /// Failed attempts that were retried since open.
    retries: AtomicU64,
    /// Entries deleted since the last compaction of the consumed range.
    deletes_since_compaction: AtomicU64,
    /// Whether a compaction is running, so at most one is.
    compacting: Arc<AtomicBool>,
    /// Sequence below which every entry of the lane is gone, so reads start there
    /// instead of stepping over the tombstones of everything sent since the memtable
    /// was new (that walk was ~5 % of a loaded sampler's CPU).
    consumed: AtomicU64,
}

/// What [`ExportQueues::stage`] added to a batch; hand it to [`ExportQueues::committed`]
/// once the batch is written, or drop it if the write failed.
#[derive(Debug)]
#[must_use = "call ExportQueues::committed once the batch is written"]
pub struct Staged {
    /// Bytes added to every lane.
    bytes_per_lane: u64,
    /// Sequence of the entries.
    seq: u64,
}

/// Counters of one lane, for logs and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueStats {
    /// The exporter's name (`otlp`, `otlphttp`, `file`).
    pub exporter: &'static str,
    /// Bytes waiting on disk.
    pub queued_bytes: u64,
    /// Items delivered since open.
    pub exported_items: u64,
    /// Items refused for good by the downstream since open.
    pub rejected_items: u64,
    /// Failed attempts retried since open.
    pub retries: u64,
}

/// How sending one batch ended.
enum Delivery {
    /// Delivered or refused for good; the entries are deleted.
    Done,
    /// Several entries merged into bytes that do not decode; nothing was deleted.
    Undecodable,
    /// The drain deadline passed; the entries stay queued.
    Stopped,
}

/// A batch on its way to an exporter: decoded, or the stored bytes as they are.
enum Outgoing {
    Decoded(ExportRequest),
    Encoded(Signal, Bytes),
}

impl Outgoing {
    fn signal(&self) -> Signal {
        match self {
            Outgoing::Decoded(request) => request.signal(),
            Outgoing::Encoded(signal, _) => *signal,
        }
    }

    fn is_encoded(&self) -> bool {
        matches!(self, Outgoing::Encoded(..))
    }

    async fn send(&self, exporter: &Exporter) -> Result<(), ExportError> {
        match self {
            Outgoing::Decoded(request) => exporter.export(request).await,
            Outgoing::Encoded(signal, body) => exporter.export_encoded(*signal, body.clone()).await,
        }
    }
}

/// Consecutive same-signal entries read from the head of a lane.
struct Batch {
    keys: Vec<[u8; KEY_LEN]>,
    /// `None` when the first entry is unreadable (it is then deleted alone).
    signal: Option<Signal>,
    /// Concatenated protobuf payloads: the merged request.
    payload: Vec<u8>,
    items: u64,
    /// Bytes of keys and values, as counted in [`Lane::bytes`].
    stored_bytes: u64,
}

impl ExportQueues {
    /// Opens the queues of `exporters`, rebuilding each lane's byte count from disk.
    /// Exporters of the same kind get lanes in the order given (up to 63 per kind).
    pub fn open(
        storage: Arc<Storage>,
        exporters: Vec<Exporter>,
        config: &ExporterConfig,
    ) -> Result<Arc<Self>, StorageError> {
        let mut lanes: Vec<Lane> = Vec::with_capacity(exporters.len());
        for exporter in exporters {
            let kind = kind_code(&exporter);
            let same_kind = lanes
                .iter()
                .filter(|lane| lane.id & 0b11 == kind)
                .count()
                .min(63) as u8;
            lanes.push(Lane {
                id: kind | (same_kind << 2),
                exporter,
                bytes: AtomicI64::new(0),
                wake: Notify::new(),
                exported_items: AtomicU64::new(0),
                rejected_items: AtomicU64::new(0),
                retries: AtomicU64::new(0),
                deletes_since_compaction: AtomicU64::new(0),
                compacting: Arc::new(AtomicBool::new(false)),
                consumed: AtomicU64::new(0),
            });
        }
        let mut orphaned = (0u64, 0u64);
        for item in storage
            .db()
            .iterator_cf(storage.cf(CF_QUEUE), IteratorMode::Start)
        {
            let (key, value) = item?;
            let size = (key.len() + value.len()) as u64;
            match lanes.iter().find(|lane| Some(&lane.id) == key.first()) {
                Some(lane) => {
                    lane.bytes.fetch_add(size as i64, Ordering::Relaxed);
                }
                None => {
                    orphaned.0 += 1;
                    orphaned.1 += size;
                }
            }
        }
        if orphaned.0 > 0 {
            tracing::warn!(
                entries = orphaned.0,
                bytes = orphaned.1,
                "export queue holds entries for an exporter that is no longer configured; they stay on disk until it is configured again"
            );
        }
        for lane in &lanes {
            lane.update_gauge();
        }
        Ok(Arc::new(ExportQueues {
            storage,
            lanes,
            max_bytes: config.queue.max_bytes,
            retry: config.retry.clone(),
            pending: Mutex::default(),
        }))
    }

    /// Adds `request` for every exporter to `batch`; the caller writes the batch atomically
    /// (e.g. together with deleting the trace from the buffer) and then calls
    /// [`ExportQueues::committed`]. Never refuses: see the module docs on the bound.
    pub fn stage(&self, batch: &mut WriteBatch, request: &ExportRequest) -> Staged {
        self.stage_value(batch, encode_value(request))
    }

    /// [`ExportQueues::stage`] for a request already encoded: `payload`, an encoded
    /// request of `signal` holding `items` items.
    pub fn stage_encoded(
        &self,
        batch: &mut WriteBatch,
        signal: Signal,
        items: u64,
        payload: &[u8],
    ) -> Staged {
        let mut value = value_header(signal, items, payload.len());
        value.extend_from_slice(payload);
        self.stage_value(batch, value)
    }

    fn stage_value(&self, batch: &mut WriteBatch, value: Vec<u8>) -> Staged {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let seq = self.storage.next_seq();
        pending.insert(seq);
        drop(pending);
        let cf = self.storage.cf(CF_QUEUE);
        for lane in &self.lanes {
            batch.put_cf(cf, lane_key(lane.id, seq), &value);
        }
        Staged {
            bytes_per_lane: (KEY_LEN + value.len()) as u64,
            seq,
        }
    }

    /// Accounts for a written batch and wakes the senders.
    pub fn committed(&self, staged: Staged) {
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&staged.seq);
        for lane in &self.lanes {
            lane.bytes
                .fetch_add(staged.bytes_per_lane as i64, Ordering::Relaxed);
            lane.update_gauge();
            lane.wake.notify_one();
        }
    }

    /// Stages, writes and commits `request` in one call (for pass-through data).
    pub fn enqueue(&self, request: &ExportRequest) -> Result<(), StorageError> {
        let mut batch = WriteBatch::default();
        let staged = self.stage(&mut batch, request);
        self.storage.write(batch)?;
        self.committed(staged);
        Ok(())
    }

    /// Whether any exporter's queue is at or over `exporter.queue.max_bytes`; receivers
    /// then throttle clients.
    pub fn is_full(&self) -> bool {
        self.lanes
            .iter()
            .any(|lane| lane.queued_bytes() >= self.max_bytes)
    }

    /// Bytes waiting on disk, summed over all exporters.
    pub fn queued_bytes(&self) -> u64 {
        self.lanes.iter().map(Lane::queued_bytes).sum()
    }

    /// One line per exporter for the start-up banner.
    pub fn describe(&self) -> Vec<String> {
        self.lanes
            .iter()
            .map(|lane| lane.exporter.describe())
            .collect()
    }

    /// Per-exporter counters since open.
    pub fn stats(&self) -> Vec<QueueStats> {
        self.lanes
            .iter()
            .map(|lane| QueueStats {
                exporter: lane.exporter.name(),
                queued_bytes: lane.queued_bytes(),
                exported_items: lane.exported_items.load(Ordering::Relaxed),
                rejected_items: lane.rejected_items.load(Ordering::Relaxed),
                retries: lane.retries.load(Ordering::Relaxed),
            })
            .collect()
    }

    /// Runs one sender per exporter until `shutdown` resolves, then keeps sending for at
    /// most `drain` to flush what is queued, and returns. Whatever is still queued then
    /// stays on disk for the next start.
    pub async fn run(
        self: Arc<Self>,
        shutdown: impl Future<Output = ()> + Send + 'static,
        drain: Duration,
    ) {
        let (drain_tx, drain_rx) = watch::channel(None);
        let mut senders = JoinSet::new();
        for index in 0..self.lanes.len() {
            senders.spawn(self.clone().send_lane(index, drain_rx.clone()));
        }
        let mut shutdown = std::pin::pin!(shutdown);
        let mut draining = false;
        loop {
            tokio::select! {
                () = &mut shutdown, if !draining => {
                    draining = true;
                    drain_tx.send_replace(Some(Instant::now() + drain));
                }
                joined = senders.join_next() => match joined {
                    Some(Ok(())) => {}
                    Some(Err(e)) => tracing::error!(error = %e, "export sender task failed"),
                    None if draining => break,
                    None => {
                        (&mut shutdown).await;
                        break;
                    }
                },
            }
        }
        for stats in self.stats() {
            if stats.queued_bytes > 0 {
                tracing::info!(
                    exporter = stats.exporter,
                    queued_bytes = stats.queued_bytes,
                    "export queue kept on disk for the next start"
                );
            }
        }
    }

    /// The sender of one lane: reads, merges, sends, deletes, until the drain ends.
    async fn send_lane(self: Arc<Self>, index: usize, mut drain: watch::Receiver<Option<Instant>>) {
        let lane = &self.lanes[index];
        // After a merged batch failed to decode, read one entry at a time to isolate the
        // unreadable one instead of dropping its neighbours.
        let mut merge = true;
        loop {
            if drain
                .borrow()
                .is_some_and(|deadline| Instant::now() >= deadline)
            {
                return;
            }
            let this = self.clone();
            let read = tokio::task::spawn_blocking(move || this.read_batch(index, merge)).await;
            match read {
                Ok(Ok(Some(batch))) => match self.deliver(lane, batch, drain.clone()).await {
                    Delivery::Done => merge = true,
                    Delivery::Undecodable => merge = false,
                    Delivery::Stopped => return,
                },
                Ok(Ok(None)) => {
                    if drain.borrow().is_some() {
                        return;
                    }
                    tokio::select! {
                        () = lane.wake.notified() => {}
                        changed = drain.changed() => if changed.is_err() { return },
                    }
                }
                Ok(Err(e)) => {
                    tracing::error!(exporter = lane.exporter.name(), error = %e, "cannot read export queue");
                    tokio::select! {
                        () = tokio::time::sleep(self.retry.max_interval) => {}
                        () = drain_expired(drain.clone()) => return,
                    }
                }
                Err(e) => {
                    tracing::error!(exporter = lane.exporter.name(), error = %e, "export queue reader failed");
                    return;
                }
            }
        }
    }

    /// Sends `batch` until it is delivered or refused for good (then deletes it), or until
    /// the drain deadline passes (the batch stays queued). An exporter that takes encoded
    /// requests gets the stored bytes as they are; the others get them decoded.
    async fn deliver(
        &self,
        lane: &Lane,
        mut batch: Batch,
        drain: watch::Receiver<Option<Instant>>,
    ) -> Delivery {
        let exporter = lane.exporter.name();
        let payload = Bytes::from(std::mem::take(&mut batch.payload));
        let request = match batch.signal {
            Some(signal) if lane.exporter.takes_encoded() => {
                Outgoing::Encoded(signal, payload.clone())
            }
            Some(signal) => match decode_request(signal, &payload) {
                Ok(request) => Outgoing::Decoded(request),
                Err(_) if batch.keys.len() > 1 => return Delivery::Undecodable,
                Err(e) => {
                    let reason = format!("{} bytes do not decode: {e}", payload.len());
                    return self.refuse_unreadable(lane, &batch, &reason);
                }
            },
            None if batch.keys.len() > 1 => return Delivery::Undecodable,
            None => {
                return self.refuse_unreadable(
                    lane,
                    &batch,
                    "unknown signal tag or truncated header",
                );
            }
        };
        let signal = request.signal();
        let mut attempt = 0u32;
        loop {
            let result = tokio::select! {
                result = request.send(&lane.exporter) => result,
                () = drain_expired(drain.clone()) => return Delivery::Stopped,
            };
            match result {
                Ok(()) => {
                    lane.exported_items
                        .fetch_add(batch.items, Ordering::Relaxed);
                    self.remove(lane, &batch, Some(signal), "success");
                    return Delivery::Done;
                }
                // Sent undecoded, bytes that do not decode are refused: merged entries go
                // again one by one (a bad one must not take its neighbours with it), and
                // a bad entry alone goes to quarantine.
                Err(ExportError::Permanent(_))
                    if request.is_encoded() && decode_request(signal, &payload).is_err() =>
                {
                    if batch.keys.len() > 1 {
                        return Delivery::Undecodable;
                    }
                    return self.refuse_unreadable(
                        lane,
                        &batch,
                        &format!("{} bytes do not decode", payload.len()),
                    );
                }
                Err(ExportError::Permanent(message)) => {
                    tracing::warn!(
                        exporter,
                        signal = signal.as_str(),
                        items = batch.items,
                        message,
                        "downstream refused export request; dropping it"
                    );
                    lane.rejected_items
                        .fetch_add(batch.items, Ordering::Relaxed);
                    self.remove(lane, &batch, Some(signal), "rejected");
                    return Delivery::Done;
                }
                Err(ExportError::Retryable {
                    retry_after,
                    message,
                }) => {
                    let delay = backoff_delay(&self.retry, attempt, random_unit(), retry_after);
                    tracing::warn!(
                        exporter,
                        signal = signal.as_str(),
                        attempt = attempt + 1,
                        retry_in = ?delay,
                        message,
                        "export failed; will retry"
                    );
                    lane.retries.fetch_add(1, Ordering::Relaxed);
                    metrics::counter!(names::EXPORT_RETRIES, "exporter" => exporter).increment(1);
                    attempt = attempt.saturating_add(1);
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        () = drain_expired(drain.clone()) => return Delivery::Stopped,
                    }
                }
            }
        }
    }

    /// Moves an entry that cannot be read to quarantine and counts its items as rejected.
    fn refuse_unreadable(&self, lane: &Lane, batch: &Batch, reason: &str) -> Delivery {
        tracing::error!(
            exporter = lane.exporter.name(),
            reason,
            "an export queue entry cannot be read; moving it to quarantine"
        );
        self.quarantine(batch, reason);
        lane.rejected_items
            .fetch_add(batch.items, Ordering::Relaxed);
        self.remove(lane, batch, batch.signal, "rejected");
        Delivery::Done
    }

    /// Reads the head of lane `index`: consecutive same-signal entries within the merge
    /// bounds (only the first entry unless `merge`). `None` when the lane is empty.
    fn read_batch(&self, index: usize, merge: bool) -> Result<Option<Batch>, StorageError> {
        let id = self.lanes[index].id;
        let consumed = self.lanes[index].consumed.load(Ordering::Acquire);
        let mut options = ReadOptions::default();
        options.set_iterate_lower_bound(lane_key(id, consumed).to_vec());
        options.set_iterate_upper_bound(vec![id + 1]);
        let iter = self.storage.db().iterator_cf_opt(
            self.storage.cf(CF_QUEUE),
            options,
            IteratorMode::Start,
        );
        let mut batch: Option<Batch> = None;
        for item in iter {
            let (key, value) = item?;
            let key: [u8; KEY_LEN] = match key.as_ref().try_into() {
                Ok(key) => key,
                Err(_) => {
                    return Err(StorageError::Corrupt(format!(
                        "export queue key of {} bytes",
                        key.len()
                    )));
                }
            };
            let stored_bytes = (KEY_LEN + value.len()) as u64;
            let Some((signal, items, payload)) = decode_value(&value) else {
                if batch.is_none() {
                    return Ok(Some(Batch {
                        keys: vec![key],
                        signal: None,
                        payload: Vec::new(),
                        items: 0,
                        stored_bytes,
                    }));
                }
                break;
            };
            match &mut batch {
                None => {
                    batch = Some(Batch {
                        keys: vec![key],
                        signal: Some(signal),
                        payload: payload.to_vec(),
                        items,
                        stored_bytes,
                    });
                }
                Some(b) => {
                    if !merge
                        || b.signal != Some(signal)
                        || b.payload.len() + payload.len() > MAX_MERGE_BYTES
                        || b.items + items > MAX_MERGE_ITEMS
                    {
                        break;
                    }
                    b.keys.push(key);
                    b.payload.extend_from_slice(payload);
                    b.items += items;
                    b.stored_bytes += stored_bytes;
                }
            }
        }
        Ok(batch)
    }

    /// Deletes a finished batch and records its outcome (`signal` is `None` for unreadable
    /// entries, which count under no signal).
    /// Moves the entries of an unreadable batch to quarantine (the one corruption policy,
    /// [`Storage::quarantine`]); [`ExportQueues::remove`] then accounts for them.
    fn quarantine(&self, batch: &Batch, reason: &str) {
        let cf = self.storage.cf(CF_QUEUE);
        for key in &batch.keys {
            let moved = match self.storage.db().get_cf(cf, key) {
                Ok(Some(value)) => self.storage.quarantine(Store::Queue, key, &value, &reason),
                Ok(None) => Ok(()),
                Err(e) => Err(e.into()),
            };
            if let Err(e) = moved {
                tracing::error!(error = %e, "cannot quarantine an export queue entry; it is deleted");
            }
        }
    }

    fn remove(&self, lane: &Lane, batch: &Batch, signal: Option<Signal>, outcome: &'static str) {
        let cf = self.storage.cf(CF_QUEUE);
        let mut write = WriteBatch::default();
        for key in &batch.keys {
            write.delete_cf(cf, key);
        }
        if let Err(e) = self.storage.write(write) {
            // The entries stay and are sent again: at least once.
            tracing::error!(exporter = lane.exporter.name(), error = %e, "cannot delete sent export queue entries");
            return;
        }
        // A batch is the lane's first entries, so everything up to its last key is gone,
        // except entries staged earlier and still being written. Entries staged from now
        // on get later sequences.
        if let Some(last) = batch.keys.last() {
            let seq = u64::from_be_bytes(last[1..].try_into().expect("8 bytes"));
            let pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            let below = pending.first().map_or(u64::MAX, |p| *p);
            lane.consumed
                .fetch_max(seq.saturating_add(1).min(below), Ordering::AcqRel);
        }
        lane.bytes
            .fetch_sub(batch.stored_bytes as i64, Ordering::Relaxed);
        lane.update_gauge();
        if let Some(signal) = signal {
            metrics::counter!(
                names::EXPORTED_ITEMS,
                "signal" => signal.as_str(),
                "exporter" => lane.exporter.name(),
                "outcome" => outcome
            )
            .increment(batch.items);
        }
        let deleted = lane
            .deletes_since_compaction
            .fetch_add(batch.keys.len() as u64, Ordering::Relaxed)
            + batch.keys.len() as u64;
        if let Some(last) = batch.keys.last()
            && deleted >= COMPACT_AFTER_DELETES
            && !lane.compacting.swap(true, Ordering::AcqRel)
        {
            lane.deletes_since_compaction.store(0, Ordering::Relaxed);
            let storage = self.storage.clone();
            let compacting = lane.compacting.clone();
            let (from, to) = ([lane.id], *last);
            tokio::task::spawn_blocking(move || {
                storage
                    .db()
                    .compact_range_cf(storage.cf(CF_QUEUE), Some(&from[..]), Some(&to[..]));
                compacting.store(false, Ordering::Release);
            });
        }
    }
}

impl Lane {
    fn queued_bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed).max(0) as u64
    }

    fn update_gauge(&self) {
        metrics::gauge!(names::EXPORT_QUEUE_BYTES, "exporter" => self.exporter.name())
            .set(self.queued_bytes() as f64);
    }
}

/// Delay before retry number `attempt + 1`: `initial_interval · 2^attempt`, capped at
/// `max_interval`, scaled by a jitter factor in [0.5, 1.5) from `jitter` ∈ [0, 1) and capped
/// again. A non-zero delay the server asked for (`retry_after`) is used as given.
pub fn backoff_delay(
    retry: &RetryConfig,
    attempt: u32,
    jitter: f64,
    retry_after: Option<Duration>,
) -> Duration {
    if let Some(asked) = retry_after.filter(|d| !d.is_zero()) {
        return asked;
    }
    let base = retry
        .initial_interval
        .saturating_mul(2u32.saturating_pow(attempt))
        .min(retry.max_interval);
    base.mul_f64(0.5 + jitter.clamp(0.0, 1.0))
        .min(retry.max_interval)
}

/// Resolves once the drain deadline has been set and has passed.
async fn drain_expired(mut drain: watch::Receiver<Option<Instant>>) {
    loop {
        let deadline = *drain.borrow_and_update();
        if let Some(deadline) = deadline {
            tokio::time::sleep_until(deadline).await;
            return;
        }
        if drain.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// A uniformly distributed number in [0, 1) for jitter, from the standard library's
/// randomly keyed hasher (no RNG dependency needed for this).
fn random_unit() -> f64 {
    let bits = std::collections::hash_map::RandomState::new().hash_one(0u8) >> 11;
    bits as f64 / (1u64 << 53) as f64
}

fn kind_code(exporter: &Exporter) -> u8 {
    match exporter {
        Exporter::Grpc(_) => 1,
        Exporter::Http(_) => 2,
        Exporter::File(_) => 3,
    }
}

fn lane_key(id: u8, seq: u64) -> [u8; KEY_LEN] {
    let mut key = [0u8; KEY_LEN];
    key[0] = id;
    key[1..].copy_from_slice(&seq.to_be_bytes());
    key
}

fn signal_tag(signal: Signal) -> u8 {
    match signal {
        Signal::Traces => 1,
        Signal::Logs => 2,
        Signal::Metrics => 3,
    }
}

fn encode_value(request: &ExportRequest) -> Vec<u8> {
    let (len, signal) = match request {
        ExportRequest::Traces(r) => (r.encoded_len(), Signal::Traces),
        ExportRequest::Logs(r) => (r.encoded_len(), Signal::Logs),
        ExportRequest::Metrics(r) => (r.encoded_len(), Signal::Metrics),
    };
    let mut value = value_header(signal, request.item_count() as u64, len);
    let encoded = match request {
        ExportRequest::Traces(r) => r.encode(&mut value),
        ExportRequest::Logs(r) => r.encode(&mut value),
        ExportRequest::Metrics(r) => r.encode(&mut value),
    };
    encoded.expect("a Vec grows as needed");
    value
}

/// A stored value's header (signal, item count) with room for a payload of `len` bytes.
fn value_header(signal: Signal, items: u64, len: usize) -> Vec<u8> {
    let mut value = Vec::with_capacity(VALUE_HEADER_LEN + len);
    value.push(signal_tag(signal));
    value.extend_from_slice(&u32::try_from(items).unwrap_or(u32::MAX).to_be_bytes());
    value
}

/// Splits a stored value into signal, item count and protobuf payload.
fn decode_value(value: &[u8]) -> Option<(Signal, u64, &[u8])> {
    if value.len() < VALUE_HEADER_LEN {
        return None;
    }
    let signal = match value[0] {
        1 => Signal::Traces,
        2 => Signal::Logs,
        3 => Signal::Metrics,
        _ => return None,
    };
    let items = u32::from_be_bytes([value[1], value[2], value[3], value[4]]);
    Some((signal, u64::from(items), &value[VALUE_HEADER_LEN..]))
}

fn decode_request(signal: Signal, payload: &[u8]) -> Result<ExportRequest, prost::DecodeError> {
    Ok(match signal {
        Signal::Traces => ExportRequest::Traces(ExportTraceServiceRequest::decode(payload)?),
        Signal::Logs => ExportRequest::Logs(ExportLogsServiceRequest::decode(payload)?),
        Signal::Metrics => ExportRequest::Metrics(ExportMetricsServiceRequest::decode(payload)?),
    })
}

/// Storage in `dir/db` and export queues writing to `dir/out.jsonl`, for `config`, whose
/// `sampler.storage_dir` is set to match; shared by the shells' tests.
#[cfg(test)]
pub(crate) fn open_for_tests(
    dir: &std::path::Path,
    config: &mut otel_tail_shared::config::Config,
) -> (Arc<Storage>, Arc<ExportQueues>) {
    config.sampler.storage_dir = dir.join("db");
    let storage = Arc::new(Storage::open(&config.sampler.storage_dir, false).unwrap());
    let exporters =
        otel_tail_shared::exporter::Exporter::from_config(&config.exporter, &dir.join("out.jsonl"))
            .unwrap();
    let queues = ExportQueues::open(storage.clone(), exporters, &config.exporter).unwrap();
    (storage, queues)
}

#[cfg(test)]
mod tests;
