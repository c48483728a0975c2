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
/// hash that changed with the code or the build's directory) are skipped.
/// Only where rustc links with its own lld (x86_64 Linux since Rust 1.90)
/// and the build's flags pick no other linker: GNU ld and gold have no
/// `--symbol-ordering-file`. `WASMSCORE_NO_HOT_TEXT=1` leaves the order
/// to the linker in any case.
fn hot_text() {
    let list = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets it")).join("hot-text.txt");
    println!("cargo:rerun-if-changed={}", list.display());
    println!("cargo:rerun-if-env-changed=WASMSCORE_NO_HOT_TEXT");
    // Set where the order is asked for: tests/hot_text.rs checks it there.
    println!("cargo::rustc-check-cfg=cfg(hot_text)");
    if std::env::var("WASMSCORE_NO_HOT_TEXT").is_ok_and(|v| !v.is_empty() && v != "0") {
        return;
    }
    if std::env::var("TARGET").as_deref() != Ok("x86_64-unknown-linux-gnu") || !rustc_links_with_lld() {
        return;
    }
    let flags = std::env::var("CARGO_ENCODED_RUSTFLAGS").unwrap_or_default();
    if let Some(flag) = flags.split('\x1f').find(|f| picks_another_linker(f)) {
        println!("cargo:warning=the build's flag {flag} picks another linker than rustc's lld: the request path's functions are not put together (hot-text.txt)");
        return;
    }
    println!("cargo:rustc-link-arg-bin=wasmscore=-Wl,--symbol-ordering-file={}", list.display());
    println!("cargo:rustc-link-arg-bin=wasmscore=-Wl,--no-warn-symbol-ordering");
    println!("cargo:rustc-cfg=hot_text");
}

/// A rustc flag that takes the link away from rustc's own lld (GNU ld
/// and gold have no `--symbol-ordering-file`; mold has it).
fn picks_another_linker(flag: &str) -> bool {
    let fuse = flag.split_once("-fuse-ld=").map(|(_, ld)| ld);
    fuse.is_some_and(|ld| ld != "lld" && ld != "mold")
        || flag.contains("linker-features=-lld")
        || flag.contains("link-self-contained=-linker")
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
