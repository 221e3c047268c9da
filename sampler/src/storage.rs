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

/// A storage failure; surfaced to clients as a retryable error.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// RocksDB refused an operation.
    #[error("rocksdb: {0}")]
    Rocks(#[from] rocksdb::Error),
    /// A stored value could not be read back.
    #[error("corrupt stored value: {0}")]
    Corrupt(String),
}

/// The sampler's database.
pub struct Storage {
    db: DB,
    write_options: WriteOptions,
    next_seq: AtomicU64,
}

impl Storage {
    /// Opens (or creates) the database in `dir`. `sync` fsyncs the WAL on every write.
    pub fn open(dir: &Path, sync: bool) -> Result<Storage, StorageError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| StorageError::Corrupt(format!("cannot create {}: {e}", dir.display())))?;
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
                ColumnFamilyDescriptor::new(CF_QUEUE, queue_options),
                ColumnFamilyDescriptor::new(CF_HOLD, hold_options.clone()),
                ColumnFamilyDescriptor::new(CF_ROLLUP, hold_options),
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
    /// with each item's key (for deleting exactly what was read, as handoff does).
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
            let (kind, payload) = split_value_ref(&value)?;
            visit(&key, kind, payload);
        }
        Ok(())
    }

    /// Visits every buffered item, grouped by trace in key order; used to rebuild the
    /// in-memory index after a restart.
    pub fn scan_buffer(
        &self,
        mut visit: impl FnMut(TraceId, BufferedKind, &[u8]),
    ) -> Result<(), StorageError> {
        for item in self.db.iterator_cf(self.cf(CF_BUFFER), IteratorMode::Start) {
            let (key, value) = item?;
            let trace: TraceId = key
                .get(..16)
                .and_then(|k| k.try_into().ok())
                .ok_or_else(|| StorageError::Corrupt("short buffer key".into()))?;
            let (kind, payload) = split_value_ref(&value)?;
            visit(trace, kind, payload);
        }
        Ok(())
    }

    /// Approximate bytes held on disk and in memtables.
    pub fn approximate_bytes(&self) -> u64 {
        let prop = |name: &str| {
            [CF_BUFFER, CF_QUEUE, CF_HOLD, CF_ROLLUP]
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
        [CF_BUFFER, CF_QUEUE, CF_HOLD, CF_ROLLUP]
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
            .scan_buffer(|t, k, p| seen.push((t, k, p.to_vec())))
            .unwrap();
        assert_eq!(seen, vec![([3; 16], BufferedKind::Spans, b"x".to_vec())]);
    }
}
