//! RocksDB storage: one database under `sampler.storage_dir` with the WAL on.
//!
//! Column families:
//! - `buffer`: telemetry waiting for its trace's decision, one value per received request
//!   under its sequence number, each item a [`BufferedKind`] ++ trace id ++ protobuf
//!   (`ResourceSpans` or `ResourceLogs` holding only that trace's items; span items keep
//!   their resources once per chunk, apart); the trace → items index is in memory (layout
//!   in [`requests`]).
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

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::ResourceSpans;
use prost::Message;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

mod requests;

use rocksdb::{
    ColumnFamily, ColumnFamilyDescriptor, DB, IteratorMode, Options, WriteBatch, WriteOptions,
};

pub use requests::{
    Forgetting, ItemKey, Location, Locations, RequestValue, SHARED_GROUP_HEAD, SharedGroup,
    StagedRequest,
};

/// Memtables of the buffer column family: the active one, those waiting to be merged, those
/// being flushed, and room for traffic meanwhile.
const BUFFER_MEMTABLES: i32 = 8;
/// Full memtables a flush of the buffer waits for and merges.
const BUFFER_MEMTABLES_TO_MERGE: i32 = 3;
// RocksDB slows every write down (to `delayed_write_rate`, 16 MiB/s) once a column family
// has `max_write_buffer_number - 1` unflushed memtables and a flush's worth of them is
// full. With a merge's worth full and one active that must not be the normal state, or
// each flush at full load throttles writes: the earlier 4 of 6 stalled ~5 times a second.
const _: () = assert!(BUFFER_MEMTABLES_TO_MERGE + 1 < BUFFER_MEMTABLES - 2);
/// Buffer values at least this long (request values; not the small forgotten-offset
/// records) are written to blob files at flush, and SST files hold only references.
const BLOB_MIN_BYTES: u64 = 4096;
/// Memtable size of the column families other than the buffer (export queue, hold,
/// rollup inputs, quarantine).
const SMALL_MEMTABLE_BYTES: usize = 32 << 20;
/// Size of one blob file: a file is deleted once every value in it is deleted.
const BLOB_FILE_BYTES: u64 = 64 * 1024 * 1024;
/// Write-ahead log the database may hold before the column families other than the buffer
/// are flushed ([`Storage::trim_wal`]); at least twice `buffer_memory_bytes`, so a large
/// buffer, whose own unflushed memtables keep that much WAL, does not flush them every second.
const WAL_TRIM_BYTES: u64 = 256 << 20;
/// Blob GC's age cutoff while the buffer's blob files are mostly live: only the oldest
/// twentieth of them has its live values moved (none until there are twenty files). At a
/// steady load the oldest blob files are about `decision_wait` old and still mostly live,
/// so moving them rewrote data about to be forgotten (6-7 % of a loaded sampler's CPU at
/// RocksDB's 0.25).
const BLOB_GC_CUTOFF_MOSTLY_LIVE: f64 = 0.05;
/// Blob GC's age cutoff while garbage dominates the buffer's blob files (each pinned by a
/// few long-lived values): the oldest quarter has its live values moved, so its files go.
const BLOB_GC_CUTOFF_MOSTLY_GARBAGE: f64 = 0.25;
/// Garbage share of the buffer's blob bytes above which blob GC moves to the larger cutoff.
const BLOB_GC_GARBAGE_HIGH: f64 = 0.5;
/// Garbage share below which blob GC moves back to the smaller cutoff.
const BLOB_GC_GARBAGE_LOW: f64 = 0.25;
/// The column families other than the buffer: little traffic, rarely a full memtable.
const SMALL_CFS: [&str; 4] = [CF_QUEUE, CF_HOLD, CF_ROLLUP, CF_QUARANTINE];
/// Every column family.
const ALL_CFS: [&str; 5] = [CF_BUFFER, CF_QUEUE, CF_HOLD, CF_ROLLUP, CF_QUARANTINE];

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
    /// Several `ResourceSpans` with spans of one trace from one request, encoded as the
    /// body of an `ExportTraceServiceRequest` (each a field 1): one item (and one index
    /// location) per trace and request however many resources its spans came under.
    TraceSpans = 3,
}

impl BufferedKind {
    fn from_byte(b: u8) -> Option<Self> {
        match b {
            1 => Some(BufferedKind::Spans),
            2 => Some(BufferedKind::Logs),
            3 => Some(BufferedKind::TraceSpans),
            _ => None,
        }
    }

    /// The `ResourceSpans` of a buffered item of this kind (none for logs).
    pub fn decode_spans(self, payload: &[u8]) -> Result<Vec<ResourceSpans>, prost::DecodeError> {
        Ok(match self {
            BufferedKind::Spans => vec![ResourceSpans::decode(payload)?],
            BufferedKind::TraceSpans => ExportTraceServiceRequest::decode(payload)?.resource_spans,
            BufferedKind::Logs => Vec::new(),
        })
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
    /// The buffer's in-memory item index ([`requests`]).
    layout: requests::Layout,
    /// WAL bytes above which the small column families are flushed (see [`WAL_TRIM_BYTES`]).
    wal_trim_bytes: u64,
    /// Whether blob GC runs at [`BLOB_GC_CUTOFF_MOSTLY_GARBAGE`] (see [`Storage::tune_blob_gc`]).
    blob_gc_collecting: AtomicBool,
}

/// Whether blob GC should run at the larger cutoff, given `garbage` of `total` bytes of the
/// buffer's blob files and whether it does now: on above half garbage, off again below a
/// quarter, so the cutoff does not flap around one threshold.
pub fn blob_gc_collecting(garbage: u64, total: u64, collecting: bool) -> bool {
    if total == 0 {
        return false;
    }
    let share = garbage as f64 / total as f64;
    if collecting {
        share > BLOB_GC_GARBAGE_LOW
    } else {
        share > BLOB_GC_GARBAGE_HIGH
    }
}

impl Storage {
    /// Opens (or creates) the database in `dir` with the default buffer memory. `sync`
    /// fsyncs the WAL on every write.
    pub fn open(dir: &Path, sync: bool) -> Result<Storage, StorageError> {
        let memory = otel_tail_shared::config::SamplerConfig::default().buffer_memory_bytes;
        Storage::open_with(dir, sync, memory)
    }

    /// Opens (or creates) the database in `dir`; the buffer's memtables may take
    /// `buffer_memory_bytes` (`sampler.buffer_memory_bytes`).
    ///
    /// The buffer holds `BUFFER_MEMTABLES` memtables of an eighth of that each; a flush waits
    /// until `BUFFER_MEMTABLES_TO_MERGE` of them are full and merges them, so an item
    /// forgotten within that much traffic is dropped by the flush instead of being written
    /// to a file and compacted away later (flushing and compacting dead data were a fifth
    /// of a sampler's CPU under load).
    pub fn open_with(
        dir: &Path,
        sync: bool,
        buffer_memory_bytes: u64,
    ) -> Result<Storage, StorageError> {
        std::fs::create_dir_all(dir).map_err(|source| StorageError::CreateDir {
            path: dir.to_path_buf(),
            source,
        })?;
        let mut options = Options::default();
        options.create_if_missing(true);
        options.create_missing_column_families(true);
        options.set_compression_type(rocksdb::DBCompressionType::Lz4);
        options.set_max_background_jobs(2);
        // Two flushes may run at once, so a flush waiting on its file's fsync does not hold
        // the next back; compactions stay one. Deprecated in the bindings because
        // `max_background_jobs` implies it, but that gives two flushes only with six
        // compactions.
        #[allow(deprecated)]
        options.set_max_background_flushes(2);
        options.set_keep_log_file_num(3);
        let mut buffer_options = Options::default();
        // Buffered spans live for seconds: compressing them on flush cost ~7% of the CPU in
        // profiles and saves little, since most are deleted before compaction.
        buffer_options.set_compression_type(rocksdb::DBCompressionType::None);
        buffer_options.set_write_buffer_size(
            (buffer_memory_bytes / BUFFER_MEMTABLES as u64).max(1 << 20) as usize,
        );
        buffer_options.set_max_write_buffer_number(BUFFER_MEMTABLES);
        buffer_options.set_min_write_buffer_number_to_merge(BUFFER_MEMTABLES_TO_MERGE);
        buffer_options.set_enable_blob_files(true);
        buffer_options.set_min_blob_size(BLOB_MIN_BYTES);
        buffer_options.set_blob_file_size(BLOB_FILE_BYTES);
        buffer_options.set_enable_blob_gc(true);
        buffer_options.set_blob_gc_age_cutoff(BLOB_GC_CUTOFF_MOSTLY_LIVE);
        // The other column families take little traffic next to the buffer; RocksDB's
        // default memtables (64 MiB, two of them, each) would let them hold hundreds of MiB
        // that `buffer_memory_bytes` does not account for.
        let mut queue_options = Options::default();
        queue_options.set_compression_type(rocksdb::DBCompressionType::Lz4);
        queue_options.set_write_buffer_size(SMALL_MEMTABLE_BYTES);
        // Held items live for one correlation window and are then deleted, like buffered
        // spans: not worth compressing.
        let mut hold_options = Options::default();
        hold_options.set_compression_type(rocksdb::DBCompressionType::None);
        hold_options.set_write_buffer_size(SMALL_MEMTABLE_BYTES);
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
            layout: requests::Layout::default(),
            wal_trim_bytes: WAL_TRIM_BYTES.max(buffer_memory_bytes.saturating_mul(2)),
            blob_gc_collecting: AtomicBool::new(false),
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

    /// An integer property of column family `cf`; 0 when RocksDB does not report it.
    fn int_property(&self, cf: &str, name: &str) -> u64 {
        self.db
            .property_int_value_cf(self.cf(cf), name)
            .ok()
            .flatten()
            .unwrap_or(0)
    }

    /// An integer property summed over every column family.
    fn int_property_all(&self, name: &str) -> u64 {
        ALL_CFS.iter().map(|cf| self.int_property(cf, name)).sum()
    }

    /// Approximate bytes held on disk and in memtables.
    pub fn approximate_bytes(&self) -> u64 {
        // Live data of SST and blob files, plus what deleted values still occupy in blob
        // files not yet removed, plus memtables.
        self.int_property_all("rocksdb.estimate-live-data-size")
            + self.int_property_all("rocksdb.live-blob-file-garbage-size")
            + self.int_property_all("rocksdb.cur-size-all-mem-tables")
    }
}

impl Storage {
    /// Bytes of write-ahead log files (`*.log`) in the database directory.
    pub fn wal_bytes(&self) -> u64 {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return 0;
        };
        entries
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "log"))
            .filter_map(|e| e.metadata().ok())
            .map(|m| m.len())
            .sum()
    }

    /// [`Storage::trim_wal`] at this database's limit: 256 MiB, or twice the buffer's
    /// memtables if more.
    pub fn trim_wal_to_limit(&self) -> Result<bool, StorageError> {
        self.trim_wal(self.wal_trim_bytes)
    }

    /// Once the write-ahead log holds more than `limit` bytes, starts a flush of the column
    /// families other than the buffer (without waiting for it); returns whether it did.
    ///
    /// RocksDB keeps every WAL file back to the oldest write some column family has not
    /// flushed. The export queue and hold rarely fill a memtable, so under load they kept
    /// 1–2 GB of the buffer's traffic in the WAL: disk that `max_storage_bytes` did not see,
    /// and seconds of replay at a restart. RocksDB's own cap (`max_total_wal_size`) flushes
    /// the buffer too, before its memtables merge, which cost a tenth of the CPU; this
    /// leaves the buffer's flushes to its memtables.
    pub fn trim_wal(&self, limit: u64) -> Result<bool, StorageError> {
        if self.wal_bytes() <= limit {
            return Ok(false);
        }
        let mut options = rocksdb::FlushOptions::default();
        options.set_wait(false);
        for cf in SMALL_CFS {
            self.db.flush_cf_opt(self.cf(cf), &options)?;
        }
        Ok(true)
    }

    /// Sets blob GC's age cutoff from the garbage share of the buffer's blob files
    /// ([`blob_gc_collecting`]); returns whether GC now runs at the larger cutoff.
    ///
    /// A blob file goes once every value in it is deleted. Buffered values mostly die
    /// within `decision_wait`, so whole files go without GC, and moving the live values of
    /// the oldest files only rewrote data about to die. A few long-lived values (a trace
    /// still receiving spans, held logs) can pin files that are otherwise garbage; once
    /// garbage is most of the blob bytes, GC moves those values out of the oldest quarter
    /// of the files so the disk they pin comes back.
    pub fn tune_blob_gc(&self) -> Result<bool, StorageError> {
        let garbage = self.int_property(CF_BUFFER, "rocksdb.live-blob-file-garbage-size");
        let total = self.int_property(CF_BUFFER, "rocksdb.live-blob-file-size");
        let was = self.blob_gc_collecting.load(Ordering::Relaxed);
        let collecting = blob_gc_collecting(garbage, total, was);
        if collecting != was {
            let cutoff = if collecting {
                BLOB_GC_CUTOFF_MOSTLY_GARBAGE
            } else {
                BLOB_GC_CUTOFF_MOSTLY_LIVE
            };
            self.db.set_options_cf(
                self.cf(CF_BUFFER),
                &[("blob_garbage_collection_age_cutoff", &cutoff.to_string())],
            )?;
            self.blob_gc_collecting.store(collecting, Ordering::Relaxed);
            tracing::info!(garbage, total, cutoff, "buffer blob GC age cutoff changed");
        }
        Ok(collecting)
    }

    /// Bytes RocksDB holds in memory: memtables, block cache and table readers (index and
    /// filter blocks of the files on disk) of every column family.
    pub fn memory_bytes(&self) -> u64 {
        self.int_property_all("rocksdb.cur-size-all-mem-tables")
            + self.int_property_all("rocksdb.block-cache-usage")
            + self.int_property_all("rocksdb.estimate-table-readers-mem")
    }
}

#[cfg(test)]
mod tests;
