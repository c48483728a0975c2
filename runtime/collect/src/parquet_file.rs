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
    /// The collected root: the directories from the file's up to it are
    /// synced when it is renamed into view.
    root: PathBuf,
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
    /// A file under `root/dir`. `writer` tells this process's writer from
    /// any other's on the same directory (pods sharing a volume are all
    /// pid 1), so no two ever name a file alike.
    pub(crate) fn create(root: &Path, dir: &Path, first_us: i64, writer: &str, seq: u64) -> Result<PartFile, ParquetError> {
        let dir = root.join(dir);
        std::fs::create_dir_all(&dir)?;
        let name = format!("part-{first_us}-{writer}-{seq}.parquet");
        let tmp = dir.join(format!(".{name}.inprogress"));
        let props = Arc::new(WriterProperties::builder().set_compression(Compression::SNAPPY).build());
        let file = create_locked(&tmp)?;
        let writer = SerializedFileWriter::new(BufWriter::new(file), schema(), props)?;
        Ok(PartFile {
            writer,
            tmp,
            path: dir.join(name),
            root: root.to_path_buf(),
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

    /// Bytes of the rows not yet in a row group: what the file holds in
    /// memory.
    pub(crate) fn buffered(&self) -> usize {
        self.buffered
    }

    /// Writes the rows held in memory as a row group.
    pub(crate) fn write_row_group(&mut self) -> Result<(), ParquetError> {
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
    /// file into view, syncing the directories the rename and the file's
    /// partition made, so a file once counted survives a power loss under
    /// its name. Returns its path. A file that fails (a full disk) is
    /// removed: unreadable without its footer, it would only hold space.
    pub(crate) fn finish(self) -> Result<PathBuf, ParquetError> {
        let (tmp, path, root) = (self.tmp.clone(), self.path.clone(), self.root.clone());
        let done = (|| {
            // Renamed while the file is still open, so still locked.
            let _file = self.complete()?;
            std::fs::rename(&tmp, &path)?;
            // The file is whole and in view: a directory that cannot be
            // synced (a filesystem that refuses it) loses nothing now.
            if let Err(e) = sync_dirs(&path, &root) {
                tracing::warn!(path = %path.display(), error = %e, "syncing a collected-data file's directory failed; a power loss may hide the file");
            }
            Ok(path)
        })();
        if done.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        done
    }

    /// Writes the last row group and the footer and syncs: the file is
    /// whole under its hidden name, and still open (locked).
    fn complete(mut self) -> Result<File, ParquetError> {
        self.write_row_group()?;
        let file = self
            .writer
            .into_inner()?
            .into_inner()
            .map_err(|e| ParquetError::External(Box::new(e.into_error())))?;
        file.sync_all()?;
        Ok(file)
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

/// Syncs the directory holding `path` and each one above it up to `root`
/// (a new `date=`/`hour=` partition's entry is in its parent's).
fn sync_dirs(path: &Path, root: &Path) -> std::io::Result<()> {
    let mut dir = path.parent();
    while let Some(d) = dir {
        File::open(d)?.sync_all()?;
        if d == root {
            break;
        }
        dir = d.parent();
    }
    Ok(())
}

/// What a crash left under a collected root, dealt with at start.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Unfinished {
    /// Files with no footer (unreadable), removed.
    pub(crate) removed: usize,
    /// Files the crash caught whole (written and synced, not yet renamed),
    /// renamed into view.
    pub(crate) recovered: usize,
}

/// Deals with the hidden files under `dir` that no process holds, those a
/// crash left: a whole one (its footer reads) is renamed into view, the
/// rest are removed.
pub(crate) fn recover_unfinished(root: &Path, dir: &Path, found: &mut Unfinished) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let path = e.path();
        if path.is_dir() {
            recover_unfinished(root, &path, found);
            continue;
        }
        let Some(name) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix('.'))
            .and_then(|n| n.strip_suffix(".inprogress"))
        else {
            continue;
        };
        let Ok(file) = File::open(&path) else { continue };
        // Held: a live writer's (this host's or another sharing the
        // directory); left alone.
        if file.try_lock().is_err() {
            continue;
        }
        let visible = path.with_file_name(name);
        if whole(&file) && !visible.exists() && std::fs::rename(&path, &visible).is_ok() && sync_dirs(&visible, root).is_ok() {
            found.recovered += 1;
        } else if std::fs::remove_file(&path).is_ok() {
            found.removed += 1;
        }
    }
}

/// Whether a file is a whole Parquet file: its footer reads.
fn whole(file: &File) -> bool {
    file.try_clone()
        .is_ok_and(|f| parquet::file::reader::SerializedFileReader::new(f).is_ok())
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
    use super::*;

    #[test]
    fn a_whole_file_a_crash_left_hidden_is_renamed_into_view_and_a_torn_one_removed() {
        let root = tempfile::tempdir().unwrap();
        let record = crate::Record {
            endpoint: "e".into(),
            version: "v".into(),
            designation: crate::Designation::Inputs,
            time_us: 1,
            correlation_id: "id".into(),
            name: "request".into(),
            content_type: "text/plain".into(),
            data: b"kept".to_vec(),
        };
        let mut f = PartFile::create(root.path(), Path::new("e/v"), 1, "w", 1).unwrap();
        f.push(&record, 10, 1 << 20).unwrap();
        // A crash after the sync, before the rename: whole, hidden, and
        // no longer held once the process is gone.
        let (tmp, path) = (f.tmp.clone(), f.path.clone());
        drop(f.complete().unwrap());
        let torn = root.path().join("e/v/.part-2-w-2.parquet.inprogress");
        std::fs::write(&torn, b"PAR1 and no footer").unwrap();
        let mut found = Unfinished::default();
        recover_unfinished(root.path(), root.path(), &mut found);
        assert_eq!(found, Unfinished { removed: 1, recovered: 1 });
        assert!(!tmp.exists() && !torn.exists());
        use parquet::file::reader::FileReader;
        let r = parquet::file::reader::SerializedFileReader::new(File::open(&path).unwrap()).unwrap();
        assert_eq!(r.metadata().file_metadata().num_rows(), 1);
    }

    #[test]
    fn base64_matches_rfc4648() {
        for (input, want) in [("", ""), ("f", "Zg=="), ("fo", "Zm8="), ("foo", "Zm9v"), ("foobar", "Zm9vYmFy")] {
            assert_eq!(super::base64(input.as_bytes()), want);
        }
    }
}
