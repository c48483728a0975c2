//! The link put the request path's functions together (build.rs,
//! hot-text.txt): the two markers bound the range, every listed function
//! this build has lies inside it, and the list still names most of them
//! (when it does not, the request path changed: run bench/hot_text.sh).

use std::collections::HashMap;
use std::process::Command;

/// Address of each function (text symbol) of the binary, from binutils' nm.
fn functions(binary: &str) -> HashMap<String, Vec<u64>> {
    let out = Command::new("nm")
        .args(["--defined-only", binary])
        .output()
        .expect("nm (binutils) runs");
    assert!(out.status.success(), "nm failed: {}", String::from_utf8_lossy(&out.stderr));
    let mut map: HashMap<String, Vec<u64>> = HashMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let mut f = line.split_whitespace();
        let (Some(addr), Some(kind), Some(name)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        if kind.eq_ignore_ascii_case("t") {
            map.entry(name.to_string())
                .or_default()
                .push(u64::from_str_radix(addr, 16).expect("hex address"));
        }
    }
    map
}

#[test]
fn the_request_path_is_linked_together() {
    if !cfg!(hot_text) {
        return; // build.rs asks for the order only where rustc links with its lld
    }
    let functions = functions(env!("CARGO_BIN_EXE_wasmscore"));
    let at = |name: &str| {
        functions
            .get(name)
            .and_then(|a| a.first().copied())
            .unwrap_or_else(|| panic!("{name} is in the binary"))
    };
    let (begin, end) = (at("wasmscore_hot_text_begin"), at("wasmscore_hot_text_end"));
    assert!(begin < end, "the markers are out of order: {begin:#x} {end:#x}");
    let listed: Vec<&str> = include_str!("../hot-text.txt")
        .lines()
        .filter(|l| !l.starts_with("wasmscore_hot_text_"))
        .collect();
    let found: Vec<(&str, u64)> = listed.iter().filter_map(|n| Some((*n, *functions.get(*n)?.first()?))).collect();
    let outside: Vec<_> = found.iter().filter(|(_, a)| *a < begin || *a > end).collect();
    assert!(outside.is_empty(), "listed functions outside the hot range: {outside:?}");
    // Names carry a hash of their crate's build settings, so a debug build
    // has other names than the release build the list was sampled from.
    if !cfg!(debug_assertions) {
        let share = found.len() as f64 / listed.len() as f64;
        assert!(
            share >= 0.5,
            "this build has only {} of hot-text.txt's {} functions: run bench/hot_text.sh",
            found.len(),
            listed.len()
        );
        assert!(end - begin >= 256 << 10, "the hot range is only {} KiB", (end - begin) >> 10);
    }
}
