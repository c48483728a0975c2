//! JavaScript and C modules in the same sandbox as Python and Rust ones,
//! and wasi-nn guests held to the version's own models. The iris modules
//! of every language are checked against ONNX Runtime in e2e.rs
//! (`every_languages_iris_module_matches_onnxruntime`).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use super::{built, error_code, hostile, model, root, Server};

fn hostile_js() -> &'static Path {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| built("hostile-js", &root().join("tests/programs/hostile-js/score.js")))
}

fn hostile_c() -> &'static Path {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| built("hostile-c", &root().join("tests/programs/hostile-c")))
}

fn limits() -> Option<serde_json::Value> {
    Some(serde_json::json!({"scoring_timeout_ms": 2000, "memory_gb": 0.0625}))
}

/// A port that is listened on, to see whether a module connected to it.
fn watched_port() -> (TcpListener, u16) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.set_nonblocking(true).unwrap();
    let port = l.local_addr().unwrap().port();
    (l, port)
}

fn nobody_connected(l: &TcpListener) {
    let got = l.accept();
    assert!(
        matches!(&got, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "a module connected: {got:?}"
    );
}

#[test]
fn javascript_modules_reach_nothing_and_their_errors_map_to_statuses() {
    let s = Server::start(&[]);
    s.deploy_ok("js", hostile_js(), &[], limits());
    s.deploy_ok("calm", super::iris_js(), &[&model()], None);
    let run = |body: &str| s.score("js", body);
    let served = |after: &str| {
        let (st, _, j) = run("after");
        assert_eq!((st, j["echo"].as_str()), (200, Some("after")), "served after {after}: {j}");
    };

    // Files, environment, host globals: none.
    let (st, _, j) = run("file");
    assert_eq!((st, j["file"].as_str()), (200, Some("denied")), "{j}");
    let (_, _, j) = run("env");
    assert_eq!((j["env_vars"].as_u64(), j["home"].as_bool()), (Some(0), Some(false)), "{j}");
    let (_, _, j) = run("globals");
    assert_eq!(j["found"], serde_json::json!([]), "{j}");
    // No network: fetch says so, and nothing connects.
    let (l, port) = watched_port();
    let (st, _, j) = run(&format!("socket:{port}"));
    assert_eq!(st, 500, "{j}");
    assert!(j["error"]["message"].as_str().unwrap().contains("fetch is not available"), "{j}");
    nobody_connected(&l);
    // No files through a dynamic import either: the component traps.
    let (st, _, j) = run("import:/etc/passwd");
    assert_eq!((st, error_code(&j)), (500, "module_trapped"), "{j}");
    served("import");
    // Coarse clocks, as for every module.
    let (_, _, j) = run("clock");
    assert!(j["performance_now_step_ms"].as_f64().unwrap() >= 1.0, "{j}");
    assert!(j["date_now_step_ms"].as_f64().unwrap() >= 1.0, "{j}");

    // Errors: an exception is 500, BadInput and malformed JSON 400, the
    // host's own errors keep their kind.
    for (body, status, code) in [
        ("throw", 500, "module_failed"),
        ("bad", 400, "bad_input"),
        ("json", 400, "bad_input"),
        ("host-bad", 400, "bad_input"),
        ("host-failed", 500, "module_failed"),
        ("not-json", 500, "module_failed"),
        ("loop", 504, "scoring_timeout"),
        ("alloc", 500, "memory_limit_exceeded"),
    ] {
        let (st, _, j) = run(body);
        assert_eq!((st, error_code(&j)), (status, code), "{body}: {j}");
        served(body);
    }
    let (_, _, j) = run("json");
    assert!(j["error"]["message"].as_str().unwrap().starts_with("malformed JSON"), "{j}");
    // console output lands in the version's logs.
    assert_eq!(run("log").0, 200);
    let logs = s.cli_ok(&["service", "logs", "js", "--json"]);
    assert!(
        logs.lines()
            .any(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["message"]
                .as_str()
                .is_some_and(|m| m.contains("hostile-js"))),
        "{logs}"
    );
    // The other endpoint was never disturbed.
    assert_eq!(s.score("calm", r#"{"data": [[5.1, 3.5, 1.4, 0.2]]}"#).0, 200);
}

#[test]
fn c_modules_reach_nothing_and_their_errors_map_to_statuses() {
    let s = Server::start(&[]);
    s.deploy_ok("c", hostile_c(), &[], limits());
    let run = |body: &str| s.score("c", body);
    let (st, _, j) = run("file");
    assert_eq!((st, j["file"].as_str()), (200, Some("denied")), "{j}");
    let (st, _, j) = run("dir");
    assert_eq!((st, j["dir"].as_str()), (200, Some("denied")), "{j}");
    let (_, _, j) = run("env");
    assert_eq!((j["env_vars"].as_u64(), j["home"].as_bool()), (Some(0), Some(false)), "{j}");
    for (body, status, code) in [
        ("trap", 500, "module_trapped"),
        ("abort", 500, "module_trapped"),
        ("fail", 500, "module_failed"),
        ("bad", 400, "bad_input"),
        ("alloc", 500, "memory_limit_exceeded"),
        ("loop", 504, "scoring_timeout"),
    ] {
        let (st, _, j) = run(body);
        assert_eq!((st, error_code(&j)), (status, code), "{body}: {j}");
        let (st, _, j) = run("after");
        assert_eq!((st, j["echo"].as_str()), (200, Some("after")), "served after {body}: {j}");
    }
}

#[test]
fn wasi_nn_guests_load_only_the_versions_own_models() {
    let s = Server::start(&[]);
    s.deploy_ok("nn", &hostile(), &[&model()], None);
    let (st, _, j) = s.score("nn", "nn-load-name:model.onnx");
    assert_eq!((st, j["loaded"].as_str()), (200, Some("model.onnx")), "{j}");
    let (st, _, j) = s.score("nn", "nn-load-name:nope.onnx");
    assert_eq!((st, j["code"].as_str()), (200, Some("not-found")), "{j}");
    let (st, _, j) = s.score("nn", "nn-load-bytes");
    assert_eq!((st, j["code"].as_str()), (200, Some("security")), "{j}");
    assert!(j["data"].as_str().unwrap().contains("load-by-name"), "{j}");
    // A tensor whose bytes do not fit its dimensions, and a half-precision one
    // to a model that takes FP32.
    let (_, _, j) = s.score("nn", "nn-bad-tensor");
    assert_eq!(j["code"].as_str(), Some("invalid-argument"), "{j}");
    let (_, _, j) = s.score("nn", "nn-fp16");
    assert_eq!(j["code"].as_str(), Some("invalid-argument"), "{j}");
}

/// A `.venv` in the directory a command runs in (a model's repository,
/// made by someone else) is not where the executable looks for its tools
/// and libraries: here a copy of it outside the checkout, run in a
/// directory whose `.venv` has a componentize-py that leaves a mark.
#[test]
fn a_venv_in_the_working_directory_is_never_used() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join("bin/wasmscore");
    std::fs::create_dir_all(exe.parent().unwrap()).unwrap();
    if std::fs::hard_link(super::bin(), &exe).is_err() {
        std::fs::copy(super::bin(), &exe).unwrap();
    }
    let work = dir.path().join("model-repo");
    let tool = work.join(".venv/bin/componentize-py");
    std::fs::create_dir_all(tool.parent().unwrap()).unwrap();
    let mark = dir.path().join("ran");
    std::fs::write(&tool, format!("#!/bin/sh\ntouch '{}'\nexit 1\n", mark.display())).unwrap();
    std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(work.join("score.py"), "def init():\n    pass\n\ndef run(raw):\n    return {}\n").unwrap();
    let out = std::process::Command::new(&exe)
        .args(["build", "score.py", "-o", "score.wasm"])
        .current_dir(&work)
        .env_remove("WASMSCORE_HOME")
        .env("PATH", "/usr/bin:/bin")
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!mark.exists(), "the working directory's componentize-py ran: {said}");
    assert!(!out.status.success() && said.contains("WASMSCORE_HOME"), "{said}");
}
