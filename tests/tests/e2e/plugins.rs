//! Device plugins: the fpga-sim plugin (a simulator) built as a shared
//! library against plugins/abi, checked by `wasmscore plugin check`; the
//! kit fails a plugin that does not meet it, and refuses a library that is
//! not a plugin.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use super::{bin, root};

/// Builds plugins/fpga-sim in its own target dir (the outer `cargo test`
/// holds the workspace's), once per run.
fn fpga_sim() -> &'static PathBuf {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| {
        let target = root().join("target/plugins");
        let st = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args(["build", "--release", "-p", "wasmscore-fpga-sim", "--manifest-path"])
            .arg(root().join("Cargo.toml"))
            .env("CARGO_TARGET_DIR", &target)
            .status()
            .unwrap();
        assert!(st.success(), "building fpga-sim failed");
        target.join("release/libwasmscore_fpga_sim.so")
    })
}

#[test]
fn fpga_sim_passes_the_conformance_kit_and_exports_only_its_entry_point() {
    let so = fpga_sim();
    let out = Command::new(bin()).args(["plugin", "check"]).arg(so).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("plugin fpga-sim (ABI 1.0)") && text.contains(", 0 failed"), "{text}");
    for want in [
        "matmul   int8",
        "matmul   int16",
        "matmul   float32",
        "gemm     float32",
        "conv2d   int8",
        "conv2d   float32",
        "unaligned",
        "4x0x4",
        "returned error",
    ] {
        assert!(text.contains(want), "{want:?} not in the report:\n{text}");
    }
    assert!(!text.contains("FAIL"));
    // Integer ops bit-exact; the 128x256x64 int8 matmul takes the array's cycles.
    assert!(
        text.lines()
            .any(|l| l.contains("matmul   int8     128x256x64 ") && l.contains("11136") && l.contains("bit-exact")),
        "{text}"
    );
    let nm = Command::new("nm").args(["-D", "--defined-only"]).arg(so).output().unwrap();
    let symbols: Vec<String> = String::from_utf8_lossy(&nm.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().nth(2).map(str::to_string))
        .collect();
    assert_eq!(symbols, vec!["wasmscore_plugin_get_api"], "exported symbols");
}

#[test]
fn the_kit_fails_a_plugin_that_misses_and_refuses_what_is_not_a_plugin() {
    // A tolerance no quantizing device meets: float cases fail, exit non-zero.
    let out = Command::new(bin())
        .args(["plugin", "check", "--tolerance", "0.0001"])
        .arg(fpga_sim())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("FAIL") && text.contains("bit-exact"), "{text}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("checks failed"));
    // A shared library without the entry point, and a file that is not one.
    let libm = ["/lib/x86_64-linux-gnu/libm.so.6", "/usr/lib/x86_64-linux-gnu/libm.so.6"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists());
    if let Some(libm) = libm {
        let out = Command::new(bin()).args(["plugin", "check", libm]).output().unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("not a wasmscore device plugin"), "{err}");
        assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    }
    let junk = tempfile::tempdir().unwrap();
    let p = junk.path().join("junk.so");
    std::fs::write(&p, b"not a library").unwrap();
    let out = Command::new(bin()).args(["plugin", "check"]).arg(&p).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot be loaded as a shared library"));
}
