//! One collected-data file: rows buffered by column, written a row group at
//! a time with parquet's column writers, renamed into view when finished.

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use parquet::basic::Compression;
use parquet::data_type::{ByteArray, ByteArrayType, Int64Type};
use parquet::errors::ParquetError;
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::parser::parse_message_type;
use parquet::schema::types::Type;

use crate::Record;

/// Every file's columns. `data` is the payload as text: UTF-8 as it came,
/// anything else base64 (`encoding` says which).
const SCHEMA: &str = "message collected_record {
    required int64 time (TIMESTAMP(MICROS,true));
    required binary correlation_id (STRING);
    required binary endpoint (STRING);
    required binary version (STRING);
    required binary designation (STRING);
    required binary name (STRING);
    required binary content_type (STRING);
    required binary encoding (STRING);
    required binary data (STRING);
}";

fn schema() -> Arc<Type> {
    static SCHEMA_TYPE: OnceLock<Arc<Type>> = OnceLock::new();
    SCHEMA_TYPE
        .get_or_init(|| Arc::new(parse_message_type(SCHEMA).expect("the schema parses")))
        .clone()
}

pub(crate) struct PartFile {
    writer: SerializedFileWriter<BufWriter<File>>,
    tmp: PathBuf,
    path: PathBuf,
    opened: Instant,
    /// Rows not yet in a row group.
    time: Vec<i64>,
    text: [Vec<ByteArray>; 8],
    rows: u64,
    /// Bytes of every row pushed, as stored (the data base64'd or not).
    bytes: u64,
    /// Bytes of the rows not yet in a row group.
    buffered: usize,
}

impl PartFile {
    pub(crate) fn create(dir: &Path, first_us: i64, seq: u64) -> Result<PartFile, ParquetError> {
        std::fs::create_dir_all(dir)?;
        let name = format!("part-{first_us}-{}-{seq}.parquet", std::process::id());
        let tmp = dir.join(format!(".{name}.inprogress"));
        let props = Arc::new(WriterProperties::builder().set_compression(Compression::SNAPPY).build());
        let file = create_locked(&tmp)?;
        let writer = SerializedFileWriter::new(BufWriter::new(file), schema(), props)?;
        Ok(PartFile {
            writer,
            tmp,
            path: dir.join(name),
            opened: Instant::now(),
            time: Vec::new(),
            text: Default::default(),
            rows: 0,
            bytes: 0,
            buffered: 0,
        })
    }

    /// Adds a row; writes the row group once it has `group_rows` rows or
    /// `group_bytes` bytes.
    pub(crate) fn push(&mut self, r: &Record, group_rows: usize, group_bytes: usize) -> Result<(), ParquetError> {
        let (encoding, data) = match std::str::from_utf8(&r.data) {
            Ok(_) => ("utf-8", ByteArray::from(r.data.clone())),
            Err(_) => ("base64", ByteArray::from(base64(&r.data).into_bytes())),
        };
        self.time.push(r.time_us);
        let cols: [ByteArray; 8] = [
            r.correlation_id.as_str().into(),
            r.endpoint.as_ref().into(),
            r.version.as_ref().into(),
            r.designation.as_str().into(),
            r.name.as_str().into(),
            r.content_type.as_str().into(),
            encoding.into(),
            data,
        ];
        let size = 8 + cols.iter().map(ByteArray::len).sum::<usize>();
        for (col, v) in self.text.iter_mut().zip(cols) {
            col.push(v);
        }
        self.rows += 1;
        self.bytes += size as u64;
        self.buffered += size;
        if self.time.len() >= group_rows || self.buffered >= group_bytes {
            self.write_row_group()?;
        }
        Ok(())
    }

    fn write_row_group(&mut self) -> Result<(), ParquetError> {
        if self.time.is_empty() {
            return Ok(());
        }
        let mut group = self.writer.next_row_group()?;
        let mut col = group.next_column()?.ok_or_else(|| ParquetError::General("no time column".into()))?;
        col.typed::<Int64Type>().write_batch(&self.time, None, None)?;
        col.close()?;
        for values in &self.text {
            let mut col = group
                .next_column()?
                .ok_or_else(|| ParquetError::General("a column is missing".into()))?;
            col.typed::<ByteArrayType>().write_batch(values, None, None)?;
            col.close()?;
        }
        group.close()?;
        self.buffered = 0;
        self.time.clear();
        for c in &mut self.text {
            c.clear();
        }
        Ok(())
    }

    pub(crate) fn rows(&self) -> u64 {
        self.rows
    }

    pub(crate) fn bytes(&self) -> u64 {
        self.bytes
    }

    pub(crate) fn age(&self) -> std::time::Duration {
        self.opened.elapsed()
    }

    /// Writes the last row group and the footer, syncs, and renames the
    /// file into view. Returns its path. A file that fails (a full disk) is
    /// removed: unreadable without its footer, it would only hold space.
    pub(crate) fn finish(mut self) -> Result<PathBuf, ParquetError> {
        let tmp = self.tmp.clone();
        let done = (|| {
            self.write_row_group()?;
            let file = self
                .writer
                .into_inner()?
                .into_inner()
                .map_err(|e| ParquetError::External(Box::new(e.into_error())))?;
            file.sync_all()?;
            // Renamed while the file is still open, so still locked.
            std::fs::rename(&self.tmp, &self.path)?;
            Ok(self.path)
        })();
        if done.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        done
    }

    /// Drops a file that failed to write.
    pub(crate) fn abandon(self) {
        let _ = std::fs::remove_file(&self.tmp);
    }
}

/// Creates `tmp` holding an exclusive lock on it for as long as it is
/// open: another process starting on the same directory removes only the
/// unfinished files no one holds (a crash's), never one being written.
/// Such a process may remove the file between its creation and the lock;
/// then it is made again.
fn create_locked(tmp: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::MetadataExt;
    let mut tries = 0;
    loop {
        tries += 1;
        // Never truncates another writer's file of the same name.
        let file = std::fs::OpenOptions::new().write(true).create_new(true).open(tmp)?;
        let locked = match file.try_lock() {
            Ok(()) => true,
            Err(std::fs::TryLockError::WouldBlock) => false,
            Err(std::fs::TryLockError::Error(e)) => return Err(e),
        };
        let same = || -> std::io::Result<bool> {
            Ok(match std::fs::metadata(tmp) {
                Ok(m) => m.ino() == file.metadata()?.ino() && m.dev() == file.metadata()?.dev(),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
                Err(e) => return Err(e),
            })
        };
        if locked && same()? {
            return Ok(file);
        }
        if tries == 5 {
            return Err(std::io::Error::other(format!("{} was taken by another process", tmp.display())));
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// Removes the unfinished files under `dir` that no process holds: those
/// a crash left (no footer: unreadable). Returns how many.
pub(crate) fn remove_unfinished(dir: &Path) -> usize {
    let mut n = 0;
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    for e in entries.flatten() {
        let path = e.path();
        if path.is_dir() {
            n += remove_unfinished(&path);
        } else if path.extension().is_some_and(|x| x == "inprogress") {
            let Ok(file) = File::open(&path) else { continue };
            // Held: a live writer's (this host's or another sharing the
            // directory); left alone.
            if file.try_lock().is_ok() && std::fs::remove_file(&path).is_ok() {
                n += 1;
            }
        }
    }
    n
}

fn base64(bytes: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ABC[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64_matches_rfc4648() {
        for (input, want) in [("", ""), ("f", "Zg=="), ("fo", "Zm8="), ("foo", "Zm9v"), ("foobar", "Zm9vYmFy")] {
            assert_eq!(super::base64(input.as_bytes()), want);
        }
    }
}
