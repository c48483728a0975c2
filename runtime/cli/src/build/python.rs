//! score.py through componentize-py.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{anyhow, bail, Context, Result};

const PY_HELPER: &str = include_str!("../../python/wasmscore.py");
const PY_APP: &str = include_str!("../../python/app.py.in");

/// componentize-py from the project's .venv (or PATH).
fn componentize_py() -> Result<PathBuf> {
    for venv in wasmscore_device_ort::venv_candidates() {
        let p = venv.join("bin/componentize-py");
        if p.is_file() {
            return Ok(p);
        }
    }
    if let Some(p) = super::on_path("componentize-py") {
        return Ok(p);
    }
    bail!("componentize-py not found; {}", wasmscore_device_ort::SETUP_HINT)
}

/// OUT is absolute.
pub fn build(score: &Path, out: &Path) -> Result<()> {
    let score = super::source_file(score)?;
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
    super::write_wit(&work.path().join("wit"))?;
    let shim = work.path().join("shim");
    std::fs::create_dir_all(&shim)?;
    std::fs::write(shim.join("wasmscore.py"), PY_HELPER)?;
    std::fs::write(shim.join("_wasmscore_app.py"), PY_APP.replace("__USER_MODULE__", module))?;
    let status = Command::new(componentize_py()?)
        .arg("-d")
        .arg(work.path().join("wit"))
        .args(["-w", "scorer", "componentize", "_wasmscore_app", "-p"])
        .arg(&shim)
        .arg("-p")
        .arg(user_dir)
        .arg("-o")
        .arg(out)
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
