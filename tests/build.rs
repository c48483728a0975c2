//! Builds the guest test programs (tests/programs) for wasm32-wasip2 and
//! tells the tests where they are (env HOSTILE_WASM).

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let programs = manifest.join("programs");
    println!("cargo:rerun-if-changed={}", programs.join("hostile/src").display());
    println!("cargo:rerun-if-changed={}", programs.join("hostile/Cargo.toml").display());
    println!("cargo:rerun-if-changed={}", manifest.join("../wit").display());
    let target_dir = manifest.join("programs/target");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "--release", "--target", "wasm32-wasip2", "--manifest-path"])
        .arg(programs.join("Cargo.toml"))
        .env("CARGO_TARGET_DIR", &target_dir)
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_BUILD_TARGET")
        .status()
        .expect("running cargo for the guest test programs");
    assert!(
        status.success(),
        "building tests/programs for wasm32-wasip2 failed (is the target installed? ./setup.sh adds it)"
    );
    let wasm = target_dir.join("wasm32-wasip2/release/hostile.wasm");
    assert!(wasm.is_file(), "{} was not built", wasm.display());
    println!("cargo:rustc-env=HOSTILE_WASM={}", wasm.display());
}
