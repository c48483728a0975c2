//! Builds the built-in scoring module (runtime/builtin) for wasm32-wasip2
//! and leaves it in OUT_DIR, where `include_bytes!` embeds it: a version
//! deployed with a model and no module runs it. And asks the linker to put
//! the request path's functions together (hot-text.txt).

use std::path::PathBuf;
use std::process::Command;

fn main() {
    hot_text();
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets it")).join("../..");
    let krate = root.join("runtime/builtin");
    for p in ["src", "Cargo.toml", "Cargo.lock"] {
        println!("cargo:rerun-if-changed={}", krate.join(p).display());
    }
    println!("cargo:rerun-if-changed={}", root.join("wit").display());
    // Its own target directory: the outer build holds the lock on target/.
    let target_dir = root.join("target/builtin");
    let mut cargo = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cargo
        .args(["build", "--release", "--locked", "--target", "wasm32-wasip2", "--manifest-path"])
        .arg(krate.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir);
    // The outer build's flags are for the host, not for wasm.
    for v in ["CARGO_ENCODED_RUSTFLAGS", "RUSTFLAGS", "CARGO_BUILD_TARGET", "CARGO_TARGET_DIR"] {
        cargo.env_remove(v);
    }
    let status = cargo.status().expect("running cargo for the built-in module");
    assert!(
        status.success(),
        "building runtime/builtin for wasm32-wasip2 failed (run ./setup.sh if the target is missing: rustup target add wasm32-wasip2)"
    );
    let built = target_dir.join("wasm32-wasip2/release/wasmscore_builtin.wasm");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets it")).join("builtin.wasm");
    std::fs::copy(&built, &out).unwrap_or_else(|e| panic!("copying {}: {e}", built.display()));
}

/// Links the functions that hot-text.txt names (the request path's, as
/// bench/hot_text.py found them under load) first in `.text`, in its
/// order, between the markers wasmscore_hot_text_begin and _end: serving
/// then runs in 1.7 MiB of contiguous code instead of pages spread over
/// 34 MiB, and runtime/control/src/pages.rs can hand back the rest of the
/// code (`WASMSCORE_PAGE_OUT=cold`). Names this build does not have (a
/// hash that changed with the code or the build's directory) are skipped. Only where rustc links with lld
/// (x86_64 Linux since Rust 1.90), the linker with `--symbol-ordering-file`.
fn hot_text() {
    let list = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets it")).join("hot-text.txt");
    println!("cargo:rerun-if-changed={}", list.display());
    if std::env::var("TARGET").as_deref() != Ok("x86_64-unknown-linux-gnu") || !rustc_links_with_lld() {
        return;
    }
    println!("cargo:rustc-link-arg-bin=wasmscore=-Wl,--symbol-ordering-file={}", list.display());
    println!("cargo:rustc-link-arg-bin=wasmscore=-Wl,--no-warn-symbol-ordering");
}

/// rustc 1.90 and later link x86_64 Linux programs with its own lld.
fn rustc_links_with_lld() -> bool {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let Ok(out) = Command::new(rustc).arg("-V").output() else {
        return false;
    };
    let version = String::from_utf8_lossy(&out.stdout);
    let minor = version
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.split('.').nth(1)?.parse::<u32>().ok());
    minor.is_some_and(|m| m >= 90)
}
