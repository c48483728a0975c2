//! Finding the ONNX Runtime shared library without downloading anything.

use std::path::{Path, PathBuf};

use crate::OrtInitError;

/// What to run when the library is missing.
pub const SETUP_HINT: &str = "Run ./setup.sh in the wasmscore checkout (it installs onnxruntime==1.31.1 into .venv); for an executable outside the checkout set WASMSCORE_HOME to the checkout, or ORT_DYLIB_PATH to libonnxruntime.so.1.31.1";

const LIB: &str = "libonnxruntime.so.1.31.1";

/// `ORT_DYLIB_PATH` if set; else `.venv/lib/python3*/site-packages/onnxruntime/capi/`
/// under `WASMSCORE_HOME`, or under the nearest ancestor of the executable
/// that has a `.venv`.
pub fn find_onnxruntime() -> Result<PathBuf, OrtInitError> {
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH") {
        let p = PathBuf::from(p);
        if p.is_file() {
            return Ok(p);
        }
        return Err(OrtInitError::NotFound {
            searched: format!("ORT_DYLIB_PATH={} is not a file", p.display()),
            hint: SETUP_HINT,
        });
    }
    let mut searched = Vec::new();
    for venv in venv_candidates() {
        if let Some(found) = lib_in_venv(&venv) {
            return Ok(found);
        }
        searched.push(venv.display().to_string());
    }
    Err(OrtInitError::NotFound {
        searched: if searched.is_empty() {
            "no .venv found in WASMSCORE_HOME or near the executable".into()
        } else {
            format!("looked in {}", searched.join(", "))
        },
        hint: SETUP_HINT,
    })
}

/// Virtual environments to look in, nearest first.
pub fn venv_candidates() -> Vec<PathBuf> {
    project_paths(".venv")
}

/// `REL` (a path that setup makes inside the checkout: `.venv`,
/// `runtime/cli/js/node_modules`) under `WASMSCORE_HOME`, then under each
/// ancestor of the executable where it exists, nearest first. Not the
/// working directory's: a `.venv` in a directory someone else made (a
/// model's repository) would give its libraries and tools to every
/// command run there. An executable outside the checkout is told where
/// it is by `WASMSCORE_HOME`.
pub fn project_paths(rel: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Some(home) = std::env::var_os("WASMSCORE_HOME") {
        out.push(PathBuf::from(home).join(rel));
    }
    if let Ok(exe) = std::env::current_exe() {
        for dir in exe.ancestors() {
            let p = dir.join(rel);
            if p.exists() && !out.contains(&p) {
                out.push(p);
            }
        }
    }
    out
}

fn lib_in_venv(venv: &Path) -> Option<PathBuf> {
    let lib = venv.join("lib");
    let entries = std::fs::read_dir(&lib).ok()?;
    for e in entries.flatten() {
        let name = e.file_name();
        if name.to_string_lossy().starts_with("python3") {
            let p = e.path().join("site-packages/onnxruntime/capi").join(LIB);
            if p.is_file() {
                return Some(p);
            }
        }
    }
    None
}
