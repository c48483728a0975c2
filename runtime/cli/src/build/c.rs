//! A directory with `score.c` through Debian's clang-19 and wasi-libc.
//!
//! 1. The world's C bindings (`scorer.h`, `scorer.c` and the component
//!    type object) come from wit-bindgen's C generator, the code that
//!    `wit-bindgen c` runs, pinned in Cargo.lock.
//! 2. clang-19 compiles every `.c` of the directory with the bindings and
//!    the `wasmscore.h` helper into a wasm32-wasi reactor module.
//! 3. wit-component turns that core module into a component, adapting its
//!    WASI preview 1 imports to preview 2 with the adapter that wasmtime
//!    48 ships (wasi-preview1-component-adapter-provider).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{anyhow, bail, Context, Result};
use wit_bindgen_core::wit_parser::Resolve;

const C_HELPER_H: &str = include_str!("../../c/wasmscore.h");
const C_HELPER_C: &str = include_str!("../../c/wasmscore.c");

/// The clang whose wasm32 runtime and linker setup installs.
const CLANG: &str = "clang-19";

/// Names the build writes next to the module's own files.
const GENERATED: &[&str] = &["scorer.c", "scorer.h", "wasmscore.c", "wasmscore.h"];

fn clang() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("WASMSCORE_CLANG") {
        return Ok(PathBuf::from(p));
    }
    super::on_path(CLANG).ok_or_else(|| {
        anyhow!(
            "{CLANG} not found; run ./setup.sh (it installs Debian's clang-19, lld-19, \
             libclang-rt-19-dev-wasm32 and wasi-libc), or set WASMSCORE_CLANG"
        )
    })
}

/// OUT is absolute.
pub fn build(dir: &Path, out: &Path) -> Result<()> {
    let dir = super::source_file(dir)?;
    let mut sources = Vec::new();
    for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        // A copied header too: `#include "wasmscore.h"` finds the module's
        // own directory first, so a stale copy would be built against.
        if GENERATED.contains(&name) {
            bail!(
                "{} has a name the build uses itself (it writes its own); remove or rename it",
                path.display()
            );
        }
        if path.extension().is_some_and(|e| e == "c") {
            sources.push(path);
        }
    }
    sources.sort();
    let clang = clang()?;
    let work = tempfile::tempdir()?;
    let gen = work.path();
    bindings(gen)?;
    std::fs::write(gen.join("wasmscore.h"), C_HELPER_H)?;
    std::fs::write(gen.join("wasmscore.c"), C_HELPER_C)?;

    let core = gen.join("core.wasm");
    let status = Command::new(&clang)
        .args(["--target=wasm32-wasi", "-O2", "-mexec-model=reactor", "-std=c11", "-Wall"])
        .arg("-I")
        .arg(gen)
        .arg("-I")
        .arg(&dir)
        .args(&sources)
        .arg(gen.join("scorer.c"))
        .arg(gen.join("wasmscore.c"))
        .arg(gen.join("scorer_component_type.o"))
        .arg("-o")
        .arg(&core)
        .stdout(std::io::stderr())
        .status()
        .with_context(|| format!("running {}", clang.display()))?;
    if !status.success() {
        bail!("{CLANG} failed for {} ({status})", dir.display());
    }
    let module = std::fs::read(&core)?;
    let component = wit_component::ComponentEncoder::default()
        .validate(true)
        .module(&module)
        .context("reading the compiled module's component type")?
        .adapter(
            wasi_preview1_component_adapter_provider::WASI_SNAPSHOT_PREVIEW1_ADAPTER_NAME,
            wasi_preview1_component_adapter_provider::WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER,
        )
        .context("adding the WASI preview 1 adapter")?
        .encode()
        .context("making a component of the compiled module")?;
    std::fs::write(out, component).with_context(|| format!("writing {}", out.display()))?;
    Ok(())
}

/// Writes wit-bindgen's C bindings of the `scorer` world under DIR.
fn bindings(dir: &Path) -> Result<()> {
    let wit = dir.join("wit");
    super::write_wit(&wit)?;
    let mut resolve = Resolve::default();
    let (pkg, _) = resolve.push_dir(&wit)?;
    let world = resolve.select_world(&[pkg], Some("scorer"))?;
    let mut files = wit_bindgen_core::Files::default();
    wit_bindgen_c::Opts::default()
        .build()
        .generate(&mut resolve, world, &mut files)
        .context("generating the C bindings")?;
    for (name, bytes) in files.iter() {
        std::fs::write(dir.join(name), bytes)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A copy of a header the build writes, beside the module's source, is
    /// refused: `#include "wasmscore.h"` would find it first.
    #[test]
    fn a_copied_header_the_build_writes_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("score.c"), "#include \"wasmscore.h\"\n").unwrap();
        std::fs::write(dir.path().join("wasmscore.h"), "/* an old copy */\n").unwrap();
        let e = build(dir.path(), &dir.path().join("out.wasm")).unwrap_err().to_string();
        assert!(e.contains("wasmscore.h has a name the build uses itself"), "{e}");
    }
}
