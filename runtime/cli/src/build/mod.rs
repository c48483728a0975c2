//! `wasmscore build`: a score.py (componentize-py) or a Rust crate (cargo,
//! wasm32-wasip2) into a component of the wasmscore:scoring/scorer world.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{anyhow, bail, Context, Result};

const WIT: &str = include_str!("../../../wit/scoring.wit");
const PY_HELPER: &str = include_str!("../python/wasmscore.py");
const PY_APP: &str = include_str!("../python/app.py.in");

/// Builds SRC into OUT; returns the component's size.
pub fn build(src: &Path, out: &Path) -> Result<u64> {
    if src.is_dir() {
        if !src.join("Cargo.toml").is_file() {
            bail!(
                "{} is a directory without Cargo.toml; give a score.py or a Rust crate",
                src.display()
            );
        }
        build_rust(src, out)?;
    } else if src.extension().is_some_and(|e| e == "py") {
        build_python(src, out)?;
    } else {
        bail!("{} is neither a .py file nor a Rust crate directory", src.display());
    }
    Ok(std::fs::metadata(out)?.len())
}

/// componentize-py from the project's .venv (or PATH).
fn componentize_py() -> Result<PathBuf> {
    for venv in wasmscore_device_ort::venv_candidates() {
        let p = venv.join("bin/componentize-py");
        if p.is_file() {
            return Ok(p);
        }
    }
    if let Ok(path) = std::env::var("PATH") {
        for dir in std::env::split_paths(&path) {
            let p = dir.join("componentize-py");
            if p.is_file() {
                return Ok(p);
            }
        }
    }
    bail!("componentize-py not found; {}", wasmscore_device_ort::SETUP_HINT)
}

fn build_python(score: &Path, out: &Path) -> Result<()> {
    let score = score
        .canonicalize()
        .with_context(|| format!("{} does not exist", score.display()))?;
    let module = score
        .file_stem()
        .and_then(|s| s.to_str())
        .ok_or_else(|| anyhow!("bad file name {}", score.display()))?;
    if !module.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') || module == "wasmscore" {
        bail!(
            "{} must have a Python module name (letters, digits, _), not \"wasmscore\"",
            score.display()
        );
    }
    let user_dir = score
        .parent()
        .ok_or_else(|| anyhow!("{} has no parent directory", score.display()))?;
    let work = tempfile::tempdir()?;
    std::fs::create_dir_all(work.path().join("wit"))?;
    std::fs::write(work.path().join("wit/scoring.wit"), WIT)?;
    let shim = work.path().join("shim");
    std::fs::create_dir_all(&shim)?;
    std::fs::write(shim.join("wasmscore.py"), PY_HELPER)?;
    std::fs::write(shim.join("_wasmscore_app.py"), PY_APP.replace("__USER_MODULE__", module))?;
    let out_abs = if out.is_absolute() {
        out.to_path_buf()
    } else {
        std::env::current_dir()?.join(out)
    };
    let status = Command::new(componentize_py()?)
        .arg("-d")
        .arg(work.path().join("wit"))
        .args(["-w", "scorer", "componentize", "_wasmscore_app", "-p"])
        .arg(&shim)
        .arg("-p")
        .arg(user_dir)
        .arg("-o")
        .arg(&out_abs)
        .current_dir(work.path())
        // Its chatter goes to stderr: stdout is for the command's own output (--json).
        .stdout(std::io::stderr())
        .status()
        .context("running componentize-py")?;
    if !status.success() {
        bail!("componentize-py failed for {} ({status})", score.display());
    }
    Ok(())
}

fn build_rust(dir: &Path, out: &Path) -> Result<()> {
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
