//! RocksDB storage: one database under `sampler.storage_dir` with the WAL on.
//!
//! Column families:
//! - `buffer`: telemetry waiting for its trace's decision. Key = trace id (16 bytes) ++
//!   sequence (8 bytes, big endian), so one prefix scan reads a whole trace in arrival order
//!   and one range delete forgets it. Value = [`BufferedKind`] tag byte ++ protobuf
//!   (`ResourceSpans` or `ResourceLogs` holding only that trace's items).
//! - `queue`: the disk-backed export queues (layout owned by `export_queue`).
//! - `hold`: trace-less logs and metric points held for `correlation.window` (layout owned
//!   by `correlation::store`).
//! - `rollup`: summary inputs of the open rollup intervals (layout owned by `settle`).
//! - `quarantine`: stored records that failed to decode, moved aside by the one corruption
//!   policy ([`Storage::quarantine`]).
//!
//! A kept trace moves from `buffer` to `queue` in one atomic `WriteBatch`, so a crash
//! at any point leaves it either still buffered (and re-decided after restart) or queued.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use otel_tail_shared::otlp::TraceId;
use rocksdb::{
    ColumnFamily, ColumnFamilyDescriptor, DB, Direction, IteratorMode, Options, WriteBatch,
    WriteOptions,
};

/// Column family of buffered traces.
pub const CF_BUFFER: &str = "buffer";
/// Column family of the export queues.
pub const CF_QUEUE: &str = "queue";
/// Column family of held trace-less logs and metric points.
pub const CF_HOLD: &str = "hold";
/// Column family of summary inputs waiting for their rollup interval to close.
pub const CF_ROLLUP: &str = "rollup";
/// Column family of records that failed to decode, kept for inspection.
pub const CF_QUARANTINE: &str = "quarantine";

/// The column family a corrupt record was read from: the `store` label of
/// `otel_tail_corrupt_records_total` and the first byte of its quarantine key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Store {
    /// [`CF_BUFFER`].
    Buffer = 1,
    /// [`CF_HOLD`].
    Hold = 2,
    /// [`CF_ROLLUP`].
    Rollup = 3,
    /// [`CF_QUEUE`].
    Queue = 4,
}

impl Store {
    /// The column family's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Store::Buffer => CF_BUFFER,
            Store::Hold => CF_HOLD,
            Store::Rollup => CF_ROLLUP,
            Store::Queue => CF_QUEUE,
        }
    }

    fn cf(self) -> &'static str {
        self.as_str()
    }
}

/// What a buffered value holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum BufferedKind {
    /// A `ResourceSpans` with spans of one trace.
    Spans = 1,
    /// A `ResourceLogs` with log records of one trace.
    Logs = 2,
}

impl BufferedKind {
    /// The stored value for `message`: the tag byte, then the protobuf, encoded once into
    /// one buffer (no intermediate copy on the ingest path).
    pub fn encode(self, message: &impl prost::Message) -> Vec<u8> {
        let mut value = Vec::with_capacity(message.encoded_len() + 1);
        value.push(self as u8);
        message.encode_raw(&mut value);
        value
    }

    fn from_byte(b: u8) -> Option<Self> {
        match b {
            1 => Some(BufferedKind::Spans),
            2 => Some(BufferedKind::Logs),
            _ => None,
        }
    }
}

/// A record moved aside by [`Storage::quarantine`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quarantined {
    /// The [`Store`] it was read from, as its tag byte.
    pub store: u8,
    /// Its key in that store.
    pub key: Vec<u8>,
    /// Its value as stored.
    pub value: Vec<u8>,
}

/// A storage failure; surfaced to clients as a retryable error.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// RocksDB refused an operation.
    #[error("rocksdb: {0}")]
    Rocks(#[from] rocksdb::Error),
    /// A stored value could not be read back.
    #[error("corrupt stored value: {0}")]
    Corrupt(String),
    /// The storage directory could not be created.
    #[error("cannot create {path}")]
    CreateDir {
        /// The directory.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// The sampler's database.
pub struct Storage {
    db: DB,
    write_options: WriteOptions,
    next_seq: AtomicU64,
    dir: std::path::PathBuf,
}

impl Storage {
    /// Opens (or creates) the database in `dir`. `sync` fsyncs the WAL on every write.
    pub fn open(dir: &Path, sync: bool) -> Result<Storage, StorageError> {
        std::fs::create_dir_all(dir).map_err(|source| StorageError::CreateDir {
            path: dir.to_path_buf(),
            source,
        })?;
        let mut options = Options::default();
        options.create_if_missing(true);
        options.create_missing_column_families(true);
        options.set_compression_type(rocksdb::DBCompressionType::Lz4);
        options.set_max_background_jobs(2);
        options.set_keep_log_file_num(3);
        let mut buffer_options = Options::default();
        // Buffered spans live for seconds: compressing them on flush cost ~7% of the CPU in
        // profiles and saves little, since most are deleted before compaction.
        buffer_options.set_compression_type(rocksdb::DBCompressionType::None);
        buffer_options.set_write_buffer_size(64 * 1024 * 1024);
        let mut queue_options = Options::default();
        queue_options.set_compression_type(rocksdb::DBCompressionType::Lz4);
        // Held items live for one correlation window and are then deleted, like buffered
        // spans: not worth compressing.
        let mut hold_options = Options::default();
        hold_options.set_compression_type(rocksdb::DBCompressionType::None);
        let db = DB::open_cf_descriptors(
            &options,
            dir,
            vec![
                ColumnFamilyDescriptor::new(CF_BUFFER, buffer_options),
                ColumnFamilyDescriptor::new(CF_QUEUE, queue_options.clone()),
                ColumnFamilyDescriptor::new(CF_HOLD, hold_options.clone()),
                ColumnFamilyDescriptor::new(CF_ROLLUP, hold_options),
                ColumnFamilyDescriptor::new(CF_QUARANTINE, queue_options),
            ],
        )?;
        let mut write_options = WriteOptions::default();
        write_options.set_sync(sync);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        Ok(Storage {
            db,
            write_options,
            next_seq: AtomicU64::new(now),
            dir: dir.to_path_buf(),
        })
    }

    /// The raw database, for modules that own a column family's layout.
    pub fn db(&self) -> &DB {
        &self.db
    }

    /// Handle of a column family created by [`Storage::open`].
    pub fn cf(&self, name: &str) -> &ColumnFamily {
        self.db
            .cf_handle(name)
            .expect("column family created at open")
    }

    /// A process-unique, increasing sequence number (seeded from the clock at open so it
    /// keeps increasing across restarts).
    pub fn next_seq(&self) -> u64 {
        self.next_seq.fetch_add(1, Ordering::Relaxed)
    }

    /// Writes a batch with the configured durability.
    pub fn write(&self, batch: WriteBatch) -> Result<(), StorageError> {
        self.db.write_opt(batch, &self.write_options)?;
        Ok(())
    }

    /// Adds one buffered item for `trace` to `batch`.
    pub fn stage_buffered(&self, batch: &mut WriteBatch, trace: &TraceId, value: &[u8]) {
        let mut key = [0u8; 24];
        key[..16].copy_from_slice(trace);
        key[16..].copy_from_slice(&self.next_seq().to_be_bytes());
        batch.put_cf(self.cf(CF_BUFFER), key, value);
    }

    /// Adds the removal of what was buffered for `trace` with a sequence below `upto` to
    /// `batch` (items staged later belong to a later arrival and stay).
    pub fn stage_forget(&self, batch: &mut WriteBatch, trace: &TraceId, upto: u64) {
        let mut from = [0u8; 24];
        from[..16].copy_from_slice(trace);
        let mut to = [0u8; 24];
        to[..16].copy_from_slice(trace);
        to[16..].copy_from_slice(&upto.to_be_bytes());
        batch.delete_range_cf(self.cf(CF_BUFFER), from, to);
    }

    /// Reads what is buffered for `trace` with a sequence below `upto`, in arrival order.
    pub fn read_trace(
        &self,
        trace: &TraceId,
        upto: u64,
    ) -> Result<Vec<(BufferedKind, Vec<u8>)>, StorageError> {
        let mut out = Vec::new();
        self.visit_trace(trace, upto, |_, kind, payload| {
            out.push((kind, payload.to_vec()))
        })?;
        Ok(out)
    }

    /// Visits what is buffered for `trace` with a sequence below `upto`, in arrival order,
    /// with each item's key (for deleting exactly what was read, as handoff does). Records
    /// that fail to decode are quarantined and skipped.
    pub fn visit_trace(
        &self,
        trace: &TraceId,
        upto: u64,
        mut visit: impl FnMut(&[u8], BufferedKind, &[u8]),
    ) -> Result<(), StorageError> {
        let iter = self.db.iterator_cf(
            self.cf(CF_BUFFER),
            IteratorMode::From(trace, Direction::Forward),
        );
        for item in iter {
            let (key, value) = item?;
            if key.len() != 24 || &key[..16] != trace {
                break;
            }
            let seq = u64::from_be_bytes(key[16..24].try_into().expect("24-byte key"));
            if seq >= upto {
                break;
            }
            match split_value_ref(&value) {
                Ok((kind, payload)) => visit(&key, kind, payload),
                Err(error) => self.quarantine(Store::Buffer, &key, &value, &error)?,
            }
        }
        Ok(())
    }

    /// Visits every buffered item, grouped by trace in key order; used to rebuild the
    /// in-memory index after a restart.
    /// Records that fail to decode are quarantined and skipped.
    pub fn scan_buffer(
        &self,
        mut visit: impl FnMut(TraceId, &[u8], BufferedKind, &[u8]),
    ) -> Result<(), StorageError> {
        for item in self.db.iterator_cf(self.cf(CF_BUFFER), IteratorMode::Start) {
            let (key, value) = item?;
            let trace: Option<TraceId> = key.get(..16).and_then(|k| k.try_into().ok());
            match (trace, split_value_ref(&value)) {
                (Some(trace), Ok((kind, payload))) => visit(trace, &key, kind, payload),
                (None, _) => self.quarantine(
                    Store::Buffer,
                    &key,
                    &value,
                    &StorageError::Corrupt(format!("{}-byte buffer key", key.len())),
                )?,
                (_, Err(error)) => self.quarantine(Store::Buffer, &key, &value, &error)?,
            }
        }
        Ok(())
    }

    /// The one corruption policy: a stored record that fails to decode is moved from
    /// `store` into [`CF_QUARANTINE`] (key: store tag ++ original key) in one write,
    /// counted in `otel_tail_corrupt_records_total{store}` and logged; the reader skips it
    /// and carries on with everything else. Nothing is retried on a record that cannot
    /// decode, and nothing else waits on it.
    pub fn quarantine(
        &self,
        store: Store,
        key: &[u8],
        value: &[u8],
        error: &dyn std::fmt::Display,
    ) -> Result<(), StorageError> {
        let mut batch = WriteBatch::default();
        let mut moved = Vec::with_capacity(key.len() + 1);
        moved.push(store as u8);
        moved.extend_from_slice(key);
        batch.put_cf(self.cf(CF_QUARANTINE), moved, value);
        batch.delete_cf(self.cf(store.cf()), key);
        self.write(batch)?;
        crate::events::corrupt_record(store, error);
        Ok(())
    }

    /// Records moved to [`CF_QUARANTINE`], in key order.
    pub fn quarantined(&self) -> Result<Vec<Quarantined>, StorageError> {
        let mut out = Vec::new();
        for item in self
            .db
            .iterator_cf(self.cf(CF_QUARANTINE), IteratorMode::Start)
        {
            let (key, value) = item?;
            if let Some((&store, original)) = key.split_first() {
                out.push(Quarantined {
                    store,
                    key: original.to_vec(),
                    value: value.to_vec(),
                });
            }
        }
        Ok(out)
    }

    /// Bytes an unprivileged writer can still use on the filesystem holding the database;
    /// `None` when the filesystem cannot tell.
    pub fn free_disk_bytes(&self) -> Option<u64> {
        let stat = rustix::fs::statvfs(&self.dir).ok()?;
        Some(stat.f_bavail.saturating_mul(stat.f_frsize))
    }

    /// Approximate bytes held on disk and in memtables.
    pub fn approximate_bytes(&self) -> u64 {
        let prop = |name: &str| {
            [CF_BUFFER, CF_QUEUE, CF_HOLD, CF_ROLLUP, CF_QUARANTINE]
                .iter()
                .map(|cf| {
                    self.db
                        .property_int_value_cf(self.cf(cf), name)
                        .ok()
                        .flatten()
                        .unwrap_or(0)
                })
                .sum::<u64>()
        };
        prop("rocksdb.estimate-live-data-size") + prop("rocksdb.cur-size-all-mem-tables")
    }
}

impl Storage {
    /// Bytes RocksDB holds in memory: memtables, block cache and table readers (index and
    /// filter blocks of the files on disk) of every column family.
    pub fn memory_bytes(&self) -> u64 {
        [CF_BUFFER, CF_QUEUE, CF_HOLD, CF_ROLLUP, CF_QUARANTINE]
            .iter()
            .map(|cf| {
                [
                    "rocksdb.cur-size-all-mem-tables",
                    "rocksdb.block-cache-usage",
                    "rocksdb.estimate-table-readers-mem",
                ]
                .iter()
                .filter_map(|p| {
                    self.db
                        .property_int_value_cf(self.cf(cf), *p)
                        .ok()
                        .flatten()
                })
                .sum::<u64>()
            })
            .sum()
    }
}

fn split_value_ref(value: &[u8]) -> Result<(BufferedKind, &[u8]), StorageError> {
    let (&tag, payload) = value
        .split_first()
        .ok_or_else(|| StorageError::Corrupt("empty buffer value".into()))?;
    let kind = BufferedKind::from_byte(tag)
        .ok_or_else(|| StorageError::Corrupt(format!("unknown buffer tag {tag}")))?;
    Ok((kind, payload))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tagged(kind: BufferedKind, payload: &[u8]) -> Vec<u8> {
        let mut value = vec![kind as u8];
        value.extend_from_slice(payload);
        value
    }

    #[test]
    fn buffered_items_round_trip_and_forget() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(dir.path(), false).unwrap();
        let a = [1u8; 16];
        let b = [2u8; 16];
        let mut batch = WriteBatch::default();
        storage.stage_buffered(&mut batch, &a, &tagged(BufferedKind::Spans, b"one"));
        storage.stage_buffered(&mut batch, &b, &tagged(BufferedKind::Logs, b"other"));
        storage.stage_buffered(&mut batch, &a, &tagged(BufferedKind::Logs, b"two"));
        storage.write(batch).unwrap();
        let watermark = storage.next_seq();
        let got = storage.read_trace(&a, watermark).unwrap();
        assert_eq!(
            got,
            vec![
                (BufferedKind::Spans, b"one".to_vec()),
                (BufferedKind::Logs, b"two".to_vec())
            ]
        );

        let mut batch = WriteBatch::default();
        storage.stage_buffered(&mut batch, &a, &tagged(BufferedKind::Spans, b"after"));
        storage.write(batch).unwrap();
        assert_eq!(
            storage.read_trace(&a, watermark).unwrap().len(),
            2,
            "later item is beyond the watermark"
        );

        let mut batch = WriteBatch::default();
        storage.stage_forget(&mut batch, &a, watermark);
        storage.write(batch).unwrap();
        assert_eq!(
            storage.read_trace(&a, u64::MAX).unwrap(),
            vec![(BufferedKind::Spans, b"after".to_vec())]
        );
        assert_eq!(storage.read_trace(&b, u64::MAX).unwrap().len(), 1);
    }

    #[test]
    fn corrupt_buffer_values_are_quarantined_and_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(dir.path(), false).unwrap();
        let trace = [7u8; 16];
        let mut batch = WriteBatch::default();
        storage.stage_buffered(&mut batch, &trace, &tagged(BufferedKind::Spans, b"a"));
        storage.stage_buffered(&mut batch, &trace, &[99, 1, 2]);
        storage.stage_buffered(&mut batch, &trace, &tagged(BufferedKind::Logs, b"b"));
        storage.write(batch).unwrap();
        let got = storage.read_trace(&trace, u64::MAX).unwrap();
        assert_eq!(
            got,
            vec![
                (BufferedKind::Spans, b"a".to_vec()),
                (BufferedKind::Logs, b"b".to_vec())
            ],
            "the records around the corrupt one are still read"
        );
        let quarantined = storage.quarantined().unwrap();
        assert_eq!(quarantined.len(), 1);
        assert_eq!(quarantined[0].store, Store::Buffer as u8);
        assert_eq!(&quarantined[0].key[..16], &trace);
        assert_eq!(quarantined[0].value, vec![99, 1, 2]);
        let mut seen = 0;
        storage.scan_buffer(|_, _, _, _| seen += 1).unwrap();
        assert_eq!(seen, 2, "the quarantined record left the buffer");
    }

    #[test]
    fn reopen_keeps_data_and_sequence_increases() {
        let dir = tempfile::tempdir().unwrap();
        let first_seq;
        {
            let storage = Storage::open(dir.path(), true).unwrap();
            first_seq = storage.next_seq();
            let mut batch = WriteBatch::default();
            storage.stage_buffered(&mut batch, &[3; 16], &tagged(BufferedKind::Spans, b"x"));
            storage.write(batch).unwrap();
        }
        let storage = Storage::open(dir.path(), true).unwrap();
        assert!(storage.next_seq() > first_seq);
        let mut seen = Vec::new();
        storage
            .scan_buffer(|t, _, k, p| seen.push((t, k, p.to_vec())))
            .unwrap();
        assert_eq!(seen, vec![([3; 16], BufferedKind::Spans, b"x".to_vec())]);
    }
}
