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
    data_bytes: u64,
}

impl PartFile {
    pub(crate) fn create(dir: &Path, first_us: i64, seq: u64) -> Result<PartFile, ParquetError> {
        std::fs::create_dir_all(dir)?;
        let name = format!("part-{first_us}-{}-{seq}.parquet", std::process::id());
        let tmp = dir.join(format!(".{name}.inprogress"));
        let props = Arc::new(WriterProperties::builder().set_compression(Compression::SNAPPY).build());
        let file = File::create(&tmp)?;
        let writer = SerializedFileWriter::new(BufWriter::new(file), schema(), props)?;
        Ok(PartFile {
            writer,
            tmp,
            path: dir.join(name),
            opened: Instant::now(),
            time: Vec::new(),
            text: Default::default(),
            rows: 0,
            data_bytes: 0,
        })
    }

    pub(crate) fn push(&mut self, r: &Record, row_group_rows: usize) -> Result<(), ParquetError> {
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
        for (col, v) in self.text.iter_mut().zip(cols) {
            col.push(v);
        }
        self.rows += 1;
        self.data_bytes += r.data.len() as u64;
        if self.time.len() >= row_group_rows {
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
        self.time.clear();
        for c in &mut self.text {
            c.clear();
        }
        Ok(())
    }

    pub(crate) fn rows(&self) -> u64 {
        self.rows
    }

    pub(crate) fn data_bytes(&self) -> u64 {
        self.data_bytes
    }

    pub(crate) fn age(&self) -> std::time::Duration {
        self.opened.elapsed()
    }

    /// Writes the last row group and the footer, syncs, and renames the
    /// file into view. Returns its path.
    pub(crate) fn finish(mut self) -> Result<PathBuf, ParquetError> {
        self.write_row_group()?;
        let file = self
            .writer
            .into_inner()?
            .into_inner()
            .map_err(|e| ParquetError::External(Box::new(e.into_error())))?;
        file.sync_all()?;
        std::fs::rename(&self.tmp, &self.path)?;
        Ok(self.path)
    }

    /// Drops a file that failed to write.
    pub(crate) fn abandon(self) {
        let _ = std::fs::remove_file(&self.tmp);
    }
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
