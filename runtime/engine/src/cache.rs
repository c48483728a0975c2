//! The compile cache: a component is compiled once and kept on disk, keyed
//! by sha256 of (component bytes, engine settings, wasmtime version), so a
//! second start deserializes the artifact instead of compiling it again.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use wasmtime::component::Component;
use wasmtime::Engine;

use crate::EngineError;

/// The wasmtime version our artifacts come from (pinned with `=` in Cargo.toml).
pub const WASMTIME_VERSION: &str = "48.0.8";

pub fn cache_key(engine: &Engine, component: &[u8]) -> String {
    // `precompile_compatibility_hash` covers every engine setting that changes
    // the compiled code; we fold it into the digest with the version.
    let mut h = std::collections::hash_map::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut h);
    let mut d = Sha256::new();
    d.update(component);
    d.update(h.finish().to_le_bytes());
    d.update(WASMTIME_VERSION.as_bytes());
    hex::encode(d.finalize())
}

pub fn artifact_path(dir: &Path, key: &str) -> PathBuf {
    dir.join(format!("{key}.cwasm"))
}

/// Loads the cached artifact if one is there and valid.
pub fn load(engine: &Engine, path: &Path) -> Option<Component> {
    if !path.is_file() {
        return None;
    }
    // SAFETY: the file is one this process family wrote with
    // `precompile_component` into the cache directory it owns; its name is the
    // digest of the inputs, and wasmtime checks the header and engine settings.
    match unsafe { Component::deserialize_file(engine, path) } {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "compile cache entry unusable; recompiling");
            None
        }
    }
}

/// Writes an artifact atomically (a file of its own, synced, then renamed):
/// one written whole or none is ever under its name, even when processes
/// sharing the directory (pods on one host, all pid 1) compile the same
/// component at once, or the machine loses power.
pub fn store(path: &Path, bytes: &[u8]) -> Result<(), EngineError> {
    let err = |e: std::io::Error| EngineError::Cache {
        path: path.display().to_string(),
        message: e.to_string(),
    };
    let dir = path.parent().expect("artifact path has a parent");
    std::fs::create_dir_all(dir).map_err(err)?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("artifact");
    let tmp = write_new(dir, name, "tmp", bytes).map_err(err)?;
    if let Err(e) = std::fs::rename(&tmp, path) {
        let _ = std::fs::remove_file(&tmp);
        return Err(err(e));
    }
    Ok(())
}

/// Writes `bytes` to a new hidden file in `dir` that no other process or
/// thread can be writing (`.{name}.{pid}-{random}.{ext}`, made with
/// `create_new`), synced; returns its path.
pub(crate) fn write_new(dir: &Path, name: &str, ext: &str, bytes: &[u8]) -> std::io::Result<PathBuf> {
    use std::hash::BuildHasher;
    use std::io::Write;
    loop {
        // std's hasher keys are random per process and per call.
        let random = std::collections::hash_map::RandomState::new().hash_one(name) as u32;
        let path = dir.join(format!(".{name}.{}-{random:08x}.{ext}", std::process::id()));
        let mut f = match std::fs::OpenOptions::new().write(true).create_new(true).open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        };
        let written = f.write_all(bytes).and_then(|()| f.sync_all());
        if let Err(e) = written {
            let _ = std::fs::remove_file(&path);
            return Err(e);
        }
        return Ok(path);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn writers_of_one_artifact_at_once_leave_one_whole_copy() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.cwasm");
        let copies: Vec<Vec<u8>> = (1..=8u8).map(|i| vec![i; 100_000 * usize::from(i)]).collect();
        std::thread::scope(|s| {
            for c in &copies {
                let path = &path;
                s.spawn(move || super::store(path, c).unwrap());
            }
        });
        let got = std::fs::read(&path).unwrap();
        assert!(copies.contains(&got), "a mixed file of {} bytes", got.len());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "temp files left");
    }
}
