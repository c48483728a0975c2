//! `wasmscore build`: a module's source into a component of the
//! wasmscore:scoring/scorer world (or `scorer-nn`, which adds wasi:nn).
//! One file per language; each writes the contract's WIT where its
//! tool reads it, runs the tool, and leaves the component at OUT.
//!
//! | source | tool |
//! | --- | --- |
//! | `score.py` | componentize-py, from the project's .venv |
//! | `score.js` / `.mjs` | ComponentizeJS, from runtime/cli/js/node_modules |
//! | a directory with `Cargo.toml` | cargo, wasm32-wasip2 |
//! | a directory with `score.c` | clang-19 + wasi-libc, wit-bindgen's C generator, the WASI p1 adapter |

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

mod c;
mod js;
mod python;
mod rust;

/// The contract, as the tools read it: `wit/` with its deps.
const WIT_FILES: &[(&str, &str)] = &[
    ("scoring.wit", include_str!("../../../../wit/scoring.wit")),
    ("deps/wasi-nn/wasi-nn.wit", include_str!("../../../../wit/deps/wasi-nn/wasi-nn.wit")),
];

/// Builds SRC into OUT; returns the component's size.
pub fn build(src: &Path, out: &Path) -> Result<u64> {
    let out = absolute(out)?;
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    if src.is_dir() {
        if src.join("Cargo.toml").is_file() {
            rust::build(src, &out)?;
        } else if src.join("score.c").is_file() {
            c::build(src, &out)?;
        } else {
            bail!(
                "{} is a directory with neither Cargo.toml (a Rust crate) nor score.c (a C module)",
                src.display()
            );
        }
    } else {
        match src.extension().and_then(|e| e.to_str()) {
            Some("py") => python::build(src, &out)?,
            Some("js" | "mjs") => js::build(src, &out)?,
            _ => bail!(
                "{} is not a module source: give a score.py, a score.js, a Rust crate directory or a directory with score.c",
                src.display()
            ),
        }
    }
    Ok(std::fs::metadata(&out)?.len())
}

/// Writes the contract's WIT files under DIR.
fn write_wit(dir: &Path) -> Result<()> {
    for (rel, text) in WIT_FILES {
        let p = dir.join(rel);
        std::fs::create_dir_all(p.parent().expect("a file under dir"))?;
        std::fs::write(&p, text)?;
    }
    Ok(())
}

fn absolute(p: &Path) -> Result<PathBuf> {
    Ok(if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()?.join(p)
    })
}

/// The source file, canonical, or a clear error.
fn source_file(p: &Path) -> Result<PathBuf> {
    p.canonicalize().with_context(|| format!("{} does not exist", p.display()))
}

/// An executable NAME on PATH.
fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(name)).find(|p| p.is_file())
}
