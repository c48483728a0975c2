//! Model data collection, off the request path: what a version's requests
//! carried and what it answered (sampled per request), and what the module
//! hands to the `data-collection` import, as Parquet files an analyst opens
//! with pandas, pyarrow or DuckDB.
//!
//! Scoring never waits for a disk: a record goes into a queue bounded by
//! counts (records and bytes), and is dropped and counted when the queue
//! is full. One writer thread per process owns every open file:
//!
//! ```text
//! DATA_DIR/collected/{endpoint}/{version}/{designation}/date=YYYY-MM-DD/hour=HH/part-….parquet
//! ```
//!
//! A file is written under a hidden name (`.part-….inprogress`, which
//! pyarrow and DuckDB's globs skip) and renamed when it is closed: at the
//! hour's end, after `rotate_after`, past `max_file_bytes`, on `flush` and
//! on shutdown. A closed file is complete; an open one is never read. On
//! shutdown the writer stops taking records (one offered after is dropped
//! and counted) and drains the queue, so every record it took is on disk.
//! A file is synced, and so is its directory once it is renamed, before it
//! is counted; one a crash caught whole under its hidden name is renamed
//! into view at the next start.

mod parquet_file;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use crate::parquet_file::PartFile;

/// What a record is, as Azure ML's ModelDataCollector designates it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Designation {
    Inputs,
    Predictions,
    Labels,
    Signals,
    General,
}

impl Designation {
    pub const ALL: [Designation; 5] = [
        Designation::Inputs,
        Designation::Predictions,
        Designation::Labels,
        Designation::Signals,
        Designation::General,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Designation::Inputs => "inputs",
            Designation::Predictions => "predictions",
            Designation::Labels => "labels",
            Designation::Signals => "signals",
            Designation::General => "general",
        }
    }
}

/// The writer's limits.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Records waiting for the writer, at most; more are dropped.
    pub max_queued_records: usize,
    /// Bytes of data waiting for the writer, at most; more are dropped.
    pub max_queued_bytes: usize,
    /// A file is closed (and readable) this long after it was opened.
    pub rotate_after: Duration,
    /// A file is closed once this many bytes of records (every column)
    /// went into it.
    pub max_file_bytes: u64,
    /// Rows per Parquet row group.
    pub row_group_rows: usize,
    /// A row group is also written once its rows hold this many bytes: what
    /// an open file keeps in memory, whatever its records' size. The open
    /// files together keep at most four times this: past it, the one
    /// holding the most writes its row group early.
    pub row_group_bytes: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            max_queued_records: 16_384,
            max_queued_bytes: 64 << 20,
            rotate_after: Duration::from_secs(300),
            max_file_bytes: 128 << 20,
            row_group_rows: 8192,
            row_group_bytes: 8 << 20,
        }
    }
}

/// One collected record.
struct Record {
    endpoint: Arc<str>,
    version: Arc<str>,
    designation: Designation,
    time_us: i64,
    correlation_id: String,
    name: String,
    content_type: String,
    data: Vec<u8>,
}

impl Record {
    /// What it holds, for the queue's byte bound: every string a module
    /// can make long, not only the data.
    fn size(&self) -> usize {
        self.data.len() + self.name.len() + self.content_type.len() + self.correlation_id.len()
    }
}

enum Msg {
    Record(Box<Record>),
    /// Close every open file, then answer.
    Flush(Sender<()>),
    /// Write what is queued, close every file, answer and stop.
    Shutdown(Sender<()>),
}

/// Figures of the whole writer.
#[derive(Default)]
pub struct WriterStats {
    /// Files closed (complete and readable).
    pub files: AtomicU64,
    /// Records lost to a failed write (the error is logged).
    pub write_errors: AtomicU64,
}

/// What waits for the writer. The channel itself is unbounded, so its
/// memory follows what waits rather than the limit (a bounded one is a
/// ring of `max_queued_records` slots, 0.5 MiB made at start whether or
/// not anything is collected); these counts bound it instead.
#[derive(Default)]
struct Queued {
    records: AtomicUsize,
    bytes: AtomicUsize,
    /// Set by the writer when it shuts down: no record is taken after.
    closed: AtomicBool,
    /// Offers between their check of `closed` and their send: the writer,
    /// having closed, waits for none to be left before its last drain, so
    /// a record is either refused (and counted) or written.
    sending: AtomicUsize,
}

/// The process's collector: the queue and its writer thread.
pub struct Collector {
    tx: Sender<Msg>,
    queued: Arc<Queued>,
    settings: Settings,
    pub stats: Arc<WriterStats>,
    /// Taken by `shutdown`. A mutex: touched at start and stop only.
    thread: std::sync::Mutex<Option<JoinHandle<()>>>,
}

impl Collector {
    /// Starts the writer for files under `root` (DATA_DIR/collected).
    /// Unfinished files a crash left behind (no footer: unreadable) are
    /// removed, and their count logged; those another live process on the
    /// same directory is writing are left alone (it holds their lock).
    pub fn start(root: PathBuf, settings: Settings) -> std::io::Result<Arc<Collector>> {
        std::fs::create_dir_all(&root)?;
        let mut found = parquet_file::Unfinished::default();
        parquet_file::recover_unfinished(&root, &root, &mut found);
        if found.removed > 0 {
            tracing::warn!(files = found.removed, root = %root.display(), "removed unfinished collected-data files left by a crash");
        }
        if found.recovered > 0 {
            tracing::warn!(files = found.recovered, root = %root.display(), "renamed into view collected-data files a crash left whole under their hidden names");
        }
        let (tx, rx) = crossbeam_channel::unbounded();
        let queued = Arc::new(Queued::default());
        let stats = Arc::new(WriterStats::default());
        let writer = Writer::new(root, settings.clone(), queued.clone(), stats.clone());
        let thread = std::thread::Builder::new()
            .name("collect-writer".into())
            .spawn(move || writer.run(rx))?;
        Ok(Arc::new(Collector {
            tx,
            queued,
            settings,
            stats,
            thread: std::sync::Mutex::new(Some(thread)),
        }))
    }

    /// A version's handle: `rate` of its requests (0 < rate <= 1) are sampled.
    pub fn for_version(self: &Arc<Self>, endpoint: &str, version: &str, rate: f64) -> Arc<VersionCollector> {
        Arc::new(VersionCollector {
            endpoint: endpoint.into(),
            version: version.into(),
            rate,
            collector: self.clone(),
            stats: VersionStats::default(),
        })
    }

    /// Closes every open file (they become readable) and waits for it.
    pub fn flush(&self) {
        let (ack, done) = crossbeam_channel::bounded(1);
        if self.tx.send(Msg::Flush(ack)).is_ok() {
            let _ = done.recv();
        }
    }

    /// Writes everything queued, closes every file and stops the writer.
    /// Called once the server stopped taking requests.
    pub fn shutdown(&self) {
        let (ack, done) = crossbeam_channel::bounded(1);
        if self.tx.send(Msg::Shutdown(ack)).is_ok() {
            let _ = done.recv();
        }
        if let Some(t) = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = t.join();
        }
    }

    fn offer(&self, record: Record) -> bool {
        let q = &self.queued;
        q.sending.fetch_add(1, Ordering::SeqCst);
        let taken = !q.closed.load(Ordering::SeqCst) && self.send(record);
        q.sending.fetch_sub(1, Ordering::SeqCst);
        taken
    }

    fn send(&self, record: Record) -> bool {
        let bytes = record.size();
        let q = &self.queued;
        let records = q.records.fetch_add(1, Ordering::Relaxed) + 1;
        let queued_bytes = q.bytes.fetch_add(bytes, Ordering::Relaxed) + bytes;
        let fits = records <= self.settings.max_queued_records && queued_bytes <= self.settings.max_queued_bytes;
        // Sending fails only once the writer is gone.
        if !fits || self.tx.send(Msg::Record(Box::new(record))).is_err() {
            q.records.fetch_sub(1, Ordering::Relaxed);
            q.bytes.fetch_sub(bytes, Ordering::Relaxed);
            return false;
        }
        true
    }
}

/// A version's counts.
#[derive(Default)]
pub struct VersionStats {
    /// Records queued for writing, by designation (`Designation::ALL` order).
    pub queued: [AtomicU64; 5],
    /// Records dropped because the queue was full.
    pub dropped: AtomicU64,
}

/// What a version's replicas collect through.
pub struct VersionCollector {
    endpoint: Arc<str>,
    version: Arc<str>,
    rate: f64,
    collector: Arc<Collector>,
    pub stats: VersionStats,
}

impl VersionCollector {
    pub fn rate(&self) -> f64 {
        self.rate
    }

    /// Whether the request with this correlation id is collected: a hash
    /// of the id against the rate, so every hop (and every record) of one
    /// request decides the same.
    pub fn sampled(&self, correlation_id: &str) -> bool {
        if self.rate >= 1.0 {
            return true;
        }
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in correlation_id.bytes() {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        // FNV-1a alone leaves ids that differ in their last digits close
        // together; murmur3's finalizer spreads them.
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^= h >> 33;
        ((h >> 11) as f64 / (1u64 << 53) as f64) < self.rate
    }

    /// Whether a record of about `bytes` fits the queue now; when it does
    /// not, it is counted as dropped here, so a caller need not build what
    /// would be dropped (a large tensor written out as JSON).
    pub fn has_room(&self, bytes: usize) -> bool {
        let (q, limits) = (&self.collector.queued, &self.collector.settings);
        let fits = q.records.load(Ordering::Relaxed) < limits.max_queued_records
            && q.bytes.load(Ordering::Relaxed).saturating_add(bytes) <= limits.max_queued_bytes;
        if !fits {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
        }
        fits
    }

    /// Queues one record; never blocks. False (and counted) when dropped.
    pub fn collect(&self, designation: Designation, correlation_id: &str, name: &str, content_type: &str, data: Vec<u8>) -> bool {
        let record = Record {
            endpoint: self.endpoint.clone(),
            version: self.version.clone(),
            designation,
            time_us: SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as i64),
            correlation_id: correlation_id.to_string(),
            name: name.to_string(),
            content_type: content_type.to_string(),
            data,
        };
        if self.collector.offer(record) {
            self.stats.queued[designation as usize].fetch_add(1, Ordering::Relaxed);
            true
        } else {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            false
        }
    }
}

/// Which file a record goes to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct FileKey {
    endpoint: Arc<str>,
    version: Arc<str>,
    designation: Designation,
    /// Hours since the epoch (UTC).
    hour: i64,
}

struct Writer {
    root: PathBuf,
    settings: Settings,
    open: HashMap<FileKey, PartFile>,
    /// Bytes the open files hold in memory, all together.
    buffered: usize,
    queued: Arc<Queued>,
    stats: Arc<WriterStats>,
    /// In every file's name: this writer's own (pid and a random number).
    id: String,
    seq: u64,
    /// When a failure to open a file was last logged, and how many since.
    last_error: Option<(Instant, u64)>,
}

const HOUR_US: i64 = 3_600_000_000;

impl Writer {
    fn new(root: PathBuf, settings: Settings, queued: Arc<Queued>, stats: Arc<WriterStats>) -> Writer {
        use std::hash::{BuildHasher, Hasher};
        // std's hasher keys are random per process (and per call).
        let random = std::collections::hash_map::RandomState::new().build_hasher().finish() as u32;
        Writer {
            root,
            settings,
            open: HashMap::new(),
            buffered: 0,
            queued,
            stats,
            id: format!("{}-{random:08x}", std::process::id()),
            seq: 0,
            last_error: None,
        }
    }

    fn run(mut self, rx: Receiver<Msg>) {
        let mut last_check = Instant::now();
        loop {
            match rx.recv_timeout(Duration::from_millis(250)) {
                Ok(Msg::Record(r)) => self.write(*r),
                Ok(Msg::Flush(ack)) => {
                    self.close_all();
                    let _ = ack.send(());
                }
                Ok(Msg::Shutdown(ack)) => {
                    // Records offered before the close (requests finishing
                    // late) are written too; those after it are refused.
                    self.queued.closed.store(true, Ordering::SeqCst);
                    while self.queued.sending.load(Ordering::SeqCst) > 0 {
                        std::thread::yield_now();
                    }
                    let mut acks = vec![ack];
                    for m in rx.try_iter() {
                        match m {
                            Msg::Record(r) => self.write(*r),
                            Msg::Flush(ack) | Msg::Shutdown(ack) => acks.push(ack),
                        }
                    }
                    self.close_all();
                    for ack in acks {
                        let _ = ack.send(());
                    }
                    return;
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    self.close_all();
                    return;
                }
            }
            if last_check.elapsed() >= Duration::from_millis(250) {
                last_check = Instant::now();
                self.close_due();
            }
        }
    }

    fn write(&mut self, r: Record) {
        self.queued.records.fetch_sub(1, Ordering::Relaxed);
        self.queued.bytes.fetch_sub(r.size(), Ordering::Relaxed);
        let key = FileKey {
            endpoint: r.endpoint.clone(),
            version: r.version.clone(),
            designation: r.designation,
            hour: r.time_us.div_euclid(HOUR_US),
        };
        if !self.open.contains_key(&key) {
            self.seq += 1;
            let dir = partition(&key);
            match PartFile::create(&self.root, &dir, r.time_us, &self.id, self.seq) {
                Ok(f) => {
                    self.open.insert(key.clone(), f);
                }
                Err(e) => {
                    self.stats.write_errors.fetch_add(1, Ordering::Relaxed);
                    // A full disk fails every record: logged once a second,
                    // with how many were lost since.
                    let lost = self.last_error.map_or(1, |(_, n)| n + 1);
                    if self.last_error.is_none_or(|(at, _)| at.elapsed() >= Duration::from_secs(1)) {
                        tracing::error!(dir = %self.root.join(&dir).display(), error = %e, lost, "cannot open a collected-data file; records are lost");
                        self.last_error = Some((Instant::now(), 0));
                    } else {
                        self.last_error = self.last_error.map(|(at, _)| (at, lost));
                    }
                    return;
                }
            }
        }
        let file = self.open.get_mut(&key).expect("opened above");
        let before = file.buffered();
        let pushed = file.push(&r, self.settings.row_group_rows, self.settings.row_group_bytes);
        self.buffered = self.buffered - before + file.buffered();
        if let Err(e) = pushed {
            self.fail(&key, e);
            return;
        }
        if file.bytes() >= self.settings.max_file_bytes {
            self.close(&key);
        } else if self.buffered > self.settings.row_group_bytes.saturating_mul(4) {
            self.spill();
        }
    }

    /// Writes the row group of the open file that holds the most in memory
    /// (many endpoints, versions and designations, each with a file open).
    fn spill(&mut self) {
        let Some((key, file)) = self.open.iter_mut().max_by_key(|(_, f)| f.buffered()) else {
            return;
        };
        let before = file.buffered();
        let written = file.write_row_group();
        self.buffered = self.buffered - before + file.buffered();
        if let Err(e) = written {
            let key = key.clone();
            self.fail(&key, e);
        }
    }

    /// Closes files whose hour is over or that are old enough.
    fn close_due(&mut self) {
        let now_hour = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as i64)
            .div_euclid(HOUR_US);
        let due: Vec<FileKey> = self
            .open
            .iter()
            .filter(|(k, f)| k.hour < now_hour || f.age() >= self.settings.rotate_after)
            .map(|(k, _)| k.clone())
            .collect();
        for k in due {
            self.close(&k);
        }
    }

    fn close_all(&mut self) {
        let keys: Vec<FileKey> = self.open.keys().cloned().collect();
        for k in keys {
            self.close(&k);
        }
    }

    fn close(&mut self, key: &FileKey) {
        if let Some(f) = self.open.remove(key) {
            self.buffered -= f.buffered();
            let rows = f.rows();
            match f.finish() {
                Ok(path) => {
                    self.stats.files.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(path = %path.display(), rows, "collected-data file closed");
                }
                Err(e) => {
                    self.stats.write_errors.fetch_add(rows, Ordering::Relaxed);
                    tracing::error!(error = %e, rows, "closing a collected-data file failed; its records are lost");
                }
            }
        }
    }

    fn fail(&mut self, key: &FileKey, e: parquet::errors::ParquetError) {
        if let Some(f) = self.open.remove(key) {
            self.buffered -= f.buffered();
            self.stats.write_errors.fetch_add(f.rows().max(1), Ordering::Relaxed);
            tracing::error!(error = %e, "writing a collected-data file failed; its records are lost");
            f.abandon();
        }
    }
}

/// `{endpoint}/{version}/{designation}/date=YYYY-MM-DD/hour=HH` (Hive
/// partitions, which pyarrow and DuckDB read as columns).
fn partition(key: &FileKey) -> PathBuf {
    let days = key.hour.div_euclid(24);
    let (y, m, d) = civil_from_days(days);
    Path::new(&*key.endpoint)
        .join(&*key.version)
        .join(key.designation.as_str())
        .join(format!("date={y:04}-{m:02}-{d:02}"))
        .join(format!("hour={:02}", key.hour.rem_euclid(24)))
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (Howard
/// Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(20_513), (2026, 3, 1));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
    }

    #[test]
    fn sampling_follows_the_rate_and_the_id() {
        let dir = tempfile::tempdir().unwrap();
        let c = Collector::start(dir.path().into(), Settings::default()).unwrap();
        let v = c.for_version("e", "v", 0.1);
        let hits = (0..20_000).filter(|i| v.sampled(&format!("{i:032x}"))).count();
        assert!((1_700..2_300).contains(&hits), "{hits}");
        assert_eq!(v.sampled("abc"), v.sampled("abc"));
        assert!(c.for_version("e", "v", 1.0).sampled("anything"));
        c.shutdown();
    }

    /// A collector with `settings` under a fresh directory, and a version
    /// that collects every request.
    fn collecting(settings: Settings) -> (tempfile::TempDir, Arc<Collector>, Arc<VersionCollector>) {
        let dir = tempfile::tempdir().unwrap();
        let c = Collector::start(dir.path().into(), settings).unwrap();
        let v = c.for_version("e", "v", 1.0);
        (dir, c, v)
    }

    #[test]
    fn a_full_queue_drops_and_counts() {
        let (_dir, c, v) = collecting(Settings {
            max_queued_bytes: 10,
            ..Settings::default()
        });
        assert!(!v.collect(Designation::Inputs, "id", "request", "application/json", vec![0; 11]));
        assert_eq!(v.stats.dropped.load(Ordering::Relaxed), 1);
        // A long name counts as much as long data.
        assert!(!v.collect(Designation::General, "id", &"n".repeat(11), "", Vec::new()));
        assert_eq!(v.stats.dropped.load(Ordering::Relaxed), 2);
        assert!(v.collect(Designation::Inputs, "id", "x", "", vec![b'1'; 5]));
        c.shutdown();
        assert_eq!(c.stats.files.load(Ordering::Relaxed), 1);
    }

    /// The finished Parquet files under `dir`, and the unfinished ones.
    fn files(dir: &Path) -> (Vec<PathBuf>, Vec<PathBuf>) {
        let (mut done, mut open) = (Vec::new(), Vec::new());
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                let (d, o) = files(&p);
                done.extend(d);
                open.extend(o);
            } else if p.extension().is_some_and(|x| x == "inprogress") {
                open.push(p);
            } else if p.extension().is_some_and(|x| x == "parquet") {
                done.push(p);
            }
        }
        (done, open)
    }

    #[test]
    fn a_second_process_on_the_directory_removes_a_crashs_files_not_a_live_ones() {
        let (dir, c, v) = collecting(Settings::default());
        assert!(v.collect(Designation::Inputs, "id", "x", "", b"1".to_vec()));
        let t = Instant::now();
        while files(dir.path()).1.is_empty() {
            assert!(t.elapsed() < Duration::from_secs(10), "the writer never opened its file");
            std::thread::sleep(Duration::from_millis(5));
        }
        let live = files(dir.path()).1;
        // What a crash leaves: a file no process holds.
        let crashed = dir.path().join("e/.part-1-99999-1.parquet.inprogress");
        std::fs::write(&crashed, b"PAR1").unwrap();
        let other = Collector::start(dir.path().into(), Settings::default()).unwrap();
        assert!(!crashed.exists(), "the crash's file is still there");
        assert_eq!(files(dir.path()).1, live, "a live writer's file was removed");
        c.shutdown();
        other.shutdown();
        let (done, open) = files(dir.path());
        assert_eq!((done.len(), open.len()), (1, 0), "{done:?} {open:?}");
        assert_eq!(c.stats.write_errors.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn rows_go_to_disk_by_bytes_and_files_close_on_every_columns_bytes() {
        // Records whose module-made name is long and whose data is empty:
        // before, neither bound counted them.
        let (dir, c, v) = collecting(Settings {
            row_group_bytes: 1_800,
            max_file_bytes: 4_500,
            ..Settings::default()
        });
        for _ in 0..10 {
            assert!(v.collect(Designation::General, "id", &"n".repeat(900), "", Vec::new()));
        }
        c.shutdown();
        let (done, _) = files(dir.path());
        // 924 bytes a row: a row group every 2 rows, a file every 5.
        assert_eq!(done.len(), 2, "{done:?}");
        for f in done {
            use parquet::file::reader::FileReader;
            let r = parquet::file::reader::SerializedFileReader::new(std::fs::File::open(&f).unwrap()).unwrap();
            let groups: Vec<i64> = r.metadata().row_groups().iter().map(|g| g.num_rows()).collect();
            assert_eq!(groups, [2, 2, 1], "{}", f.display());
        }
    }

    fn record(designation: Designation, time_us: i64, name: &str) -> Record {
        Record {
            endpoint: "e".into(),
            version: "v".into(),
            designation,
            time_us,
            correlation_id: "id".into(),
            name: name.into(),
            content_type: "text/plain".into(),
            data: b"1".to_vec(),
        }
    }

    fn writer(dir: &Path, settings: Settings) -> (Writer, Arc<Queued>) {
        let queued = Arc::new(Queued::default());
        (Writer::new(dir.into(), settings, queued.clone(), Arc::default()), queued)
    }

    #[test]
    fn a_flush_queued_behind_the_shutdown_and_the_records_after_it_are_all_seen_to() {
        let dir = tempfile::tempdir().unwrap();
        let (w, queued) = writer(dir.path(), Settings::default());
        let (tx, rx) = crossbeam_channel::unbounded();
        let ((ack, stopped), (flush_ack, flushed)) = (crossbeam_channel::bounded(1), crossbeam_channel::bounded(1));
        let r = record(Designation::Inputs, 1, "late");
        queued.records.fetch_add(1, Ordering::Relaxed);
        queued.bytes.fetch_add(r.size(), Ordering::Relaxed);
        for m in [Msg::Shutdown(ack), Msg::Flush(flush_ack), Msg::Record(Box::new(r))] {
            tx.send(m).unwrap();
        }
        w.run(rx);
        assert!(stopped.try_recv().is_ok() && flushed.try_recv().is_ok(), "an ack was never sent");
        assert_eq!(files(dir.path()).0.len(), 1, "the record after the flush was not written");
        assert_eq!(queued.records.load(Ordering::Relaxed), 0);
        assert!(queued.closed.load(Ordering::Relaxed));
    }

    #[test]
    fn a_record_offered_once_the_writer_closed_is_refused_and_counted() {
        let (_dir, c, v) = collecting(Settings::default());
        // What an offer sees while the writer closes its last files.
        c.queued.closed.store(true, Ordering::SeqCst);
        assert!(!v.collect(Designation::Inputs, "id", "x", "", b"1".to_vec()));
        assert_eq!(v.stats.dropped.load(Ordering::Relaxed), 1);
        assert_eq!(c.queued.records.load(Ordering::Relaxed), 0);
        c.shutdown();
    }

    #[test]
    fn two_writers_on_one_directory_never_name_a_file_alike() {
        // Pods sharing a volume are all pid 1; here both share this
        // process's pid, their first sequence number and first time.
        let dir = tempfile::tempdir().unwrap();
        for _ in 0..2 {
            let (mut w, queued) = writer(dir.path(), Settings::default());
            let r = record(Designation::Inputs, 1, "x");
            queued.records.fetch_add(1, Ordering::Relaxed);
            queued.bytes.fetch_add(r.size(), Ordering::Relaxed);
            w.write(r);
            w.close_all();
        }
        assert_eq!(files(dir.path()).0.len(), 2, "one file replaced the other");
    }

    #[test]
    fn the_open_files_together_hold_at_most_four_row_groups_in_memory() {
        let dir = tempfile::tempdir().unwrap();
        let (mut w, queued) = writer(
            dir.path(),
            Settings {
                row_group_bytes: 1_000,
                ..Settings::default()
            },
        );
        for d in Designation::ALL {
            let r = record(d, 1, &"n".repeat(900));
            queued.records.fetch_add(1, Ordering::Relaxed);
            queued.bytes.fetch_add(r.size(), Ordering::Relaxed);
            w.write(r);
            let held: usize = w.open.values().map(PartFile::buffered).sum();
            assert_eq!(held, w.buffered);
            assert!(held <= 4_000, "{held} bytes held by {} files", w.open.len());
        }
        assert_eq!(w.open.len(), 5);
        w.close_all();
        assert_eq!((w.buffered, files(dir.path()).0.len()), (0, 5));
    }

    #[test]
    fn the_record_count_bounds_the_queue_too() {
        let (_dir, c, v) = collecting(Settings {
            max_queued_records: 0,
            ..Settings::default()
        });
        assert!(!v.collect(Designation::Inputs, "id", "x", "", vec![b'1'; 5]));
        assert_eq!(v.stats.dropped.load(Ordering::Relaxed), 1);
        // What was refused is not counted as waiting.
        assert_eq!(c.queued.records.load(Ordering::Relaxed), 0);
        assert_eq!(c.queued.bytes.load(Ordering::Relaxed), 0);
        c.shutdown();
        assert_eq!(c.stats.files.load(Ordering::Relaxed), 0);
    }
}
