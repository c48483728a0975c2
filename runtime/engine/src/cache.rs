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

/// Writes an artifact atomically (temp file, then rename).
pub fn store(path: &Path, bytes: &[u8]) -> Result<(), EngineError> {
    let err = |e: std::io::Error| EngineError::Cache {
        path: path.display().to_string(),
        message: e.to_string(),
    };
    let dir = path.parent().expect("artifact path has a parent");
    std::fs::create_dir_all(dir).map_err(err)?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("artifact");
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    std::fs::write(&tmp, bytes).map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)?;
    Ok(())
}
