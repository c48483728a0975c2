//! A Rust crate through cargo for wasm32-wasip2.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{anyhow, bail, Context, Result};

pub fn build(dir: &Path, out: &Path) -> Result<()> {
    let output = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args([
            "build",
            "--release",
            "--target",
            "wasm32-wasip2",
            "--message-format=json-render-diagnostics",
            "--manifest-path",
        ])
        .arg(dir.join("Cargo.toml"))
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("running cargo (is the Rust toolchain installed?)")?;
    if !output.status.success() {
        bail!(
            "cargo build for wasm32-wasip2 failed in {} (run ./setup.sh if the target is missing)",
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
