//! The /ui page in a real headless Chromium (Debian's, driven by
//! playwright-core; tests/ui/check.mjs): it asks for the admin token and
//! refuses a wrong one, keeps the right one in a cookie and out of the URL,
//! lists the versions with their configured, effective and observed
//! traffic, draws the last minutes of live traffic on its four plots, and
//! shows the verdict. The screenshot is kept in target/test-artifacts/ui.png.

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use super::{post_score, root};

const ROW: &str = r#"{"data": [[5.1, 3.5, 1.4, 0.2]]}"#;

#[test]
fn the_page_draws_live_traffic_and_the_verdict_in_chromium() {
    let s = super::iris_control_and_treatment();
    // Live traffic while the page loads and refreshes.
    let stop = Arc::new(AtomicBool::new(false));
    let (addr, key) = (s.addr.clone(), s.key("iris").unwrap());
    let load = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let _ = post_score(&addr, "iris", &key, &[], ROW);
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    let artifacts = root().join("target/test-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let shot = artifacts.join("ui.png");
    let out = Command::new("node")
        .arg(root().join("tests/ui/check.mjs"))
        .arg(format!("http://{}", s.addr))
        .arg(s.admin_token())
        .arg("iris")
        .arg(&shot)
        .output()
        .unwrap();
    stop.store(true, Ordering::Relaxed);
    load.join().unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (v["asks_for_token"].as_bool(), v["wrong_token_refused"].as_bool()),
        (Some(true), Some(true)),
        "{v}"
    );
    assert!(
        v["token_kept"].as_bool().unwrap() && !v["url_after"].as_str().unwrap().contains("token"),
        "{v}"
    );
    assert_eq!(v["console_errors"], serde_json::json!([]), "{v}");
    // The versions: role, state, configured and effective traffic, and an
    // observed share near the split.
    let rows = v["rows"].as_array().unwrap();
    let row = |name: &str| {
        rows.iter()
            .find(|r| r[0] == name)
            .unwrap_or_else(|| panic!("no row {name}: {v}"))
            .clone()
    };
    let (v1, v2) = (row("v1"), row("v2"));
    // v1 is the default: configured 0%, it takes the rest.
    assert_eq!(
        (v1[1].as_str(), v1[2].as_str(), v1[4].as_str()),
        (Some("control"), Some("Healthy"), Some("70%")),
        "{v1}"
    );
    assert_eq!(
        (v2[1].as_str(), v2[3].as_str(), v2[4].as_str()),
        (Some("treatment"), Some("30%"), Some("30%")),
        "{v2}"
    );
    let observed: f64 = v2[5].as_str().unwrap().trim_end_matches('%').parse().unwrap();
    assert!((20.0..40.0).contains(&observed), "observed {observed}% for a 30% split");
    // Every plot drew lines for both versions from live data.
    for key in ["rps", "latency", "errors_per_second", "replicas"] {
        let p = &v["plots"][key];
        assert!(
            p["points"].as_u64().unwrap() >= 2 && p["inked"].as_u64().unwrap() > 500,
            "{key}: {p}"
        );
        let labels = p["series"].to_string();
        assert!(labels.contains("\"v1") && labels.contains("\"v2"), "{key}: {labels}");
    }
    // The verdict's line for the treatment.
    let verdict = v["verdict"].to_string();
    assert!(verdict.contains("v2") && verdict.contains("control"), "{verdict}");
    assert!(std::fs::metadata(&shot).unwrap().len() > 10_000, "screenshot {}", shot.display());
}
