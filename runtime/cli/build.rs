//! Builds the built-in scoring module (runtime/builtin) for wasm32-wasip2
//! and leaves it in OUT_DIR, where `include_bytes!` embeds it: a version
//! deployed with a model and no module runs it.

use std::path::PathBuf;
use std::process::Command;

fn main() {
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
