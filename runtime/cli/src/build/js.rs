//! score.js through ComponentizeJS (StarlingMonkey, a SpiderMonkey build
//! for WASI, snapshotted by Wizer after the module's top level ran).
//!
//! The module's directory is copied into a work directory beside the
//! helper (`wasmscore.js`, what `import ... from "wasmscore"` finds) and a
//! generated entry that adapts `init()` / `run(rawData)` to the world. No
//! `--aot` (it downloads weval); the build is offline once setup ran
//! `npm ci` in runtime/cli/js.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{anyhow, bail, Context, Result};

const JS_HELPER: &str = include_str!("../../js/wasmscore.js");
const JS_CONSOLE: &str = include_str!("../../js/console.js");
const JS_APP: &str = include_str!("../../js/app.js.in");

/// Where setup installs ComponentizeJS (runtime/cli/js/package-lock.json pins it).
const CLI: &str = "runtime/cli/js/node_modules/@bytecodealliance/componentize-js/src/cli.js";

/// Files of the module's directory that the build copies (what a module
/// can import; StarlingMonkey reads no JSON modules), and directories it
/// skips.
const COPIED: &[&str] = &["js", "mjs"];
const SKIPPED_DIRS: &[&str] = &["node_modules"];

/// Names the build itself writes next to the module's files.
const RESERVED: &[&str] = &["wasmscore.js", "_wasmscore_app.js", "_wasmscore_console.js"];

fn componentize_js() -> Result<PathBuf> {
    wasmscore_device_ort::project_paths(CLI)
        .into_iter()
        .find(|p| p.is_file())
        .ok_or_else(|| {
            anyhow!(
                "ComponentizeJS not found ({CLI}); run ./setup.sh in the wasmscore checkout \
                 (it runs `npm ci` in runtime/cli/js), or set WASMSCORE_HOME to the checkout"
            )
        })
}

/// OUT is absolute.
pub fn build(score: &Path, out: &Path) -> Result<()> {
    let score = super::source_file(score)?;
    let name = score
        .file_name()
        .and_then(|s| s.to_str())
        .ok_or_else(|| anyhow!("bad file name {}", score.display()))?
        .to_string();
    if RESERVED.contains(&name.as_str()) {
        bail!("{} is a name the build uses itself; rename the module (score.js)", score.display());
    }
    // It goes into the generated entry file's string literals.
    if !name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')) {
        bail!(
            "{}: a module's file name is letters, digits, '.', '_' or '-' (it is written into the generated entry file)",
            score.display()
        );
    }
    let user_dir = score
        .parent()
        .ok_or_else(|| anyhow!("{} has no parent directory", score.display()))?;
    let cli = componentize_js()?;
    let work = tempfile::tempdir()?;
    copy_sources(user_dir, work.path())?;
    std::fs::write(work.path().join("wasmscore.js"), JS_HELPER)?;
    std::fs::write(work.path().join("_wasmscore_console.js"), JS_CONSOLE)?;
    std::fs::write(
        work.path().join("_wasmscore_app.js"),
        JS_APP.replace("__USER_MODULE__", &format!("./{name}")),
    )?;
    super::write_wit(&work.path().join("wit"))?;
    let status = Command::new("node")
        .arg(&cli)
        .arg("_wasmscore_app.js")
        .args(["-w", "wit", "-n", "scorer"])
        // The host has no wasi:http; stdout and stderr are discarded, so
        // console goes to the log import instead (console.js). Clocks and
        // random stay: Date.now() and Math.random() work (coarse clocks
        // unless the version grants precise ones).
        .args(["-d", "stdio", "http", "fetch-event"])
        .arg("-o")
        .arg(out)
        .current_dir(work.path())
        .stdout(std::io::stderr())
        .status()
        .context("running node (is Node.js installed? ./setup.sh installs it)")?;
    if !status.success() {
        bail!("ComponentizeJS failed for {} ({status})", score.display());
    }
    Ok(())
}

/// Copies the module's JavaScript files, keeping their relative
/// paths, so its own relative imports resolve as they do in Node. The
/// build's own files are written after, over any of the same name.
fn copy_sources(from: &Path, to: &Path) -> Result<()> {
    for entry in std::fs::read_dir(from).with_context(|| format!("reading {}", from.display()))? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let path = entry.path();
        let ty = entry.file_type()?;
        if ty.is_dir() {
            if name.starts_with('.') || SKIPPED_DIRS.contains(&name) {
                continue;
            }
            let sub = to.join(name);
            std::fs::create_dir_all(&sub)?;
            copy_sources(&path, &sub)?;
        } else if path.extension().and_then(|e| e.to_str()).is_some_and(|e| COPIED.contains(&e)) {
            std::fs::copy(&path, to.join(name)).with_context(|| format!("copying {}", path.display()))?;
        }
    }
    Ok(())
}
