//! A Rust crate through cargo for wasm32-wasip2.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{anyhow, bail, Context, Result};

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

/// The Cargo.lock of the crate's workspace, if it has one.
fn lock_file(manifest: &Path) -> Option<PathBuf> {
    let out = cargo()
        .args(["locate-project", "--workspace", "--message-format", "plain", "--manifest-path"])
        .arg(manifest)
        .output()
        .ok()?;
    let root = PathBuf::from(String::from_utf8(out.stdout).ok()?.trim());
    let lock = root.parent()?.join("Cargo.lock");
    (out.status.success() && lock.is_file()).then_some(lock)
}

pub fn build(dir: &Path, out: &Path) -> Result<()> {
    let manifest = dir.join("Cargo.toml");
    let mut build = cargo();
    build.args([
        "build",
        "--release",
        "--target",
        "wasm32-wasip2",
        "--message-format=json-render-diagnostics",
    ]);
    // A crate with a Cargo.lock is built with the versions it names (those
    // its author tested), or not at all; one without gets one made.
    let lock = lock_file(&manifest);
    if lock.is_some() {
        build.arg("--locked");
    }
    let output = build
        .arg("--manifest-path")
        .arg(&manifest)
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("running cargo (is the Rust toolchain installed?)")?;
    if !output.status.success() {
        let locked = match &lock {
            Some(l) => format!(
                "; it was built --locked to {}: run `cargo update` there if it is out of date",
                l.display()
            ),
            None => String::new(),
        };
        bail!(
            "cargo build for wasm32-wasip2 failed in {} (run ./setup.sh if the target is missing{locked})",
            dir.display()
        );
    }
    let mut wasm = None;
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if msg["reason"] == "compiler-artifact" {
            for f in msg["filenames"].as_array().into_iter().flatten() {
                if let Some(f) = f.as_str().filter(|f| f.ends_with(".wasm")) {
                    wasm = Some(PathBuf::from(f));
                }
            }
        }
    }
    let wasm = wasm.ok_or_else(|| {
        anyhow!(
            "cargo built no .wasm in {}; the crate needs crate-type = [\"cdylib\"]",
            dir.display()
        )
    })?;
    std::fs::copy(&wasm, out).with_context(|| format!("copying {} to {}", wasm.display(), out.display()))?;
    Ok(())
}
