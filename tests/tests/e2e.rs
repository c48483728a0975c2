//! End-to-end tests: start the real `wasmscore` binary, deploy with the real
//! CLI, score over HTTP. Outputs are compared with ONNX Runtime's own result
//! (the Python onnxruntime in .venv) for the same input.

#[path = "e2e/rollout.rs"]
mod rollout;

#[path = "e2e/autoscale.rs"]
mod autoscale;

#[path = "e2e/security.rs"]
mod security;

#[path = "e2e/plugins.rs"]
mod plugins;

#[path = "e2e/secrets.rs"]
mod secrets;

#[path = "e2e/network.rs"]
mod network;

#[path = "e2e/languages.rs"]
mod languages;

#[path = "e2e/kubernetes.rs"]
mod kubernetes;

#[path = "e2e/cluster.rs"]
mod cluster;

#[path = "e2e/observe.rs"]
mod observe;

#[path = "e2e/verdict.rs"]
mod verdict;

#[path = "e2e/collect.rs"]
mod collect;

#[path = "e2e/ui.rs"]
mod ui;

#[path = "e2e/batching.rs"]
mod batching;

#[path = "e2e/oip.rs"]
mod oip;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub(crate) fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// Runs `script` (python -c) in the clients' environment (.venv-clients:
/// tritonclient, kserve, grpcio) with `args`, and returns its stdout. It
/// must exit 0 having printed `done`; else the test fails with its output
/// and `logs()` (the servers' logs).
pub(crate) fn clients_python(script: &str, args: &[&str], done: &str, logs: impl FnOnce() -> String) -> String {
    let out = Command::new(root().join(".venv-clients/bin/python"))
        .args(["-c", script])
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success() && stdout.contains(done),
        "{stdout}{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        logs()
    );
    stdout
}

pub(crate) fn bin() -> PathBuf {
    let p = root().join("target/release/wasmscore");
    assert!(
        p.is_file(),
        "{} is missing: run ./test.sh (it builds the binary first)",
        p.display()
    );
    p
}

pub(crate) fn model() -> PathBuf {
    root().join("examples/iris/model.onnx")
}

/// Compiled artifacts shared by every server the tests start, so the Python
/// module is compiled once per run, not once per test.
fn cache_dir() -> PathBuf {
    root().join("target/e2e-cache")
}

pub(crate) fn built(name: &str, src: &Path) -> PathBuf {
    let out = root().join(format!("target/e2e-{name}.wasm"));
    let st = Command::new(bin()).arg("build").arg(src).arg("-o").arg(&out).status().unwrap();
    assert!(st.success(), "wasmscore build {} failed", src.display());
    out
}

pub(crate) fn iris_python() -> &'static Path {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| built("iris-python", &root().join("examples/iris-python/score.py")))
}

pub(crate) fn iris_rust() -> &'static Path {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| built("iris-rust", &root().join("examples/iris-rust")))
}

pub(crate) fn iris_js() -> &'static Path {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| built("iris-js", &root().join("examples/iris-js/score.js")))
}

pub(crate) fn iris_c() -> &'static Path {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| built("iris-c", &root().join("examples/iris-c")))
}

pub(crate) fn iris_wasi_nn() -> &'static Path {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| built("iris-wasi-nn", &root().join("examples/iris-wasi-nn")))
}

/// The iris module of every authoring language, by endpoint name.
pub(crate) fn iris_modules() -> [(&'static str, &'static Path); 5] {
    [
        ("iris-py", iris_python()),
        ("iris-rs", iris_rust()),
        ("iris-js", iris_js()),
        ("iris-c", iris_c()),
        ("iris-nn", iris_wasi_nn()),
    ]
}

pub(crate) fn hostile() -> PathBuf {
    PathBuf::from(env!("HOSTILE_WASM"))
}

/// How `Server::launch` starts `up`.
#[derive(Default)]
pub(crate) struct Launch {
    /// Run under this umask (through sh), instead of the test's.
    pub umask: Option<&'static str>,
    /// Append the server's log (stderr) to this file instead of dropping it.
    pub log: Option<PathBuf>,
    /// The compile cache in DATA_DIR/cache, not the one the tests share.
    pub own_cache: bool,
    /// On one CPU, with no spinning: every thread of the server then shares
    /// one run queue, so two versions' latencies differ by the versions,
    /// not by which CPU the scheduler put each one's thread on while other
    /// tests keep the machine busy.
    pub one_cpu: bool,
}

/// The first CPU this process may run on (`Cpus_allowed_list`: "0-1", "2,5").
fn first_cpu() -> String {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let list = status.lines().find_map(|l| l.strip_prefix("Cpus_allowed_list:")).unwrap();
    list.trim().split([',', '-']).next().unwrap().to_string()
}

pub(crate) struct Server {
    child: Child,
    pub data: tempfile::TempDir,
    pub addr: String,
}

impl Server {
    pub(crate) fn start(extra: &[&str]) -> Server {
        let data = tempfile::tempdir().unwrap();
        Self::start_in(data, extra)
    }

    pub(crate) fn start_in(data: tempfile::TempDir, extra: &[&str]) -> Server {
        Self::launch(data, extra, &Launch::default())
    }

    pub(crate) fn launch(data: tempfile::TempDir, extra: &[&str], how: &Launch) -> Server {
        let _ = std::fs::remove_file(data.path().join("server.json"));
        let mut argv: Vec<std::ffi::OsString> = Vec::new();
        if let Some(mask) = how.umask {
            argv.extend(["sh".into(), "-c".into(), format!("umask {mask} && exec \"$@\"").into(), "sh".into()]);
        }
        if how.one_cpu {
            argv.extend(["taskset".into(), "-c".into(), first_cpu().into()]);
        }
        argv.push(bin().into());
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..]);
        if how.one_cpu {
            cmd.env("WASMSCORE_SPIN_US", "0");
        }
        cmd.args(["up", "--port", "0", "--data-dir"]).arg(data.path());
        if !how.own_cache {
            cmd.arg("--cache-dir").arg(cache_dir());
        }
        let stderr = match &how.log {
            Some(p) => Stdio::from(std::fs::OpenOptions::new().create(true).append(true).open(p).unwrap()),
            None => Stdio::null(),
        };
        let child = cmd.args(extra).stdout(Stdio::null()).stderr(stderr).spawn().unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        let info = data.path().join("server.json");
        let addr = loop {
            if let Ok(b) = std::fs::read(&info) {
                if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&b) {
                    break v["url"].as_str().unwrap().trim_start_matches("http://").to_string();
                }
            }
            assert!(Instant::now() < deadline, "wasmscore up did not start");
            std::thread::sleep(Duration::from_millis(20));
        };
        let s = Server { child, data, addr };
        // Wait for readiness (stored versions restored).
        let deadline = Instant::now() + Duration::from_secs(120);
        while s.get("/v2/health/ready").0 != 200 {
            assert!(Instant::now() < deadline, "wasmscore never became ready");
            std::thread::sleep(Duration::from_millis(20));
        }
        s
    }

    pub(crate) fn deploy(&self, name: &str, module: &Path, models: &[&Path], dc: Option<serde_json::Value>) -> std::process::Output {
        let mut cmd = Command::new(bin());
        cmd.args(["deploy", "--json", "--name", name, "--data-dir"])
            .arg(self.data.path())
            .arg("--module")
            .arg(module);
        for m in models {
            cmd.arg("--model").arg(m);
        }
        if let Some(dc) = dc {
            let p = self.data.path().join(format!("{name}-dc.json"));
            std::fs::write(&p, dc.to_string()).unwrap();
            cmd.arg("--dc").arg(p);
        }
        cmd.output().unwrap()
    }

    pub(crate) fn deploy_ok(&self, name: &str, module: &Path, models: &[&Path], dc: Option<serde_json::Value>) -> serde_json::Value {
        let out = self.deploy(name, module, models, dc);
        assert!(
            out.status.success(),
            "deploy {name} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    pub(crate) fn request(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> (u16, String, serde_json::Value) {
        let mut s = TcpStream::connect(&self.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n",
            body.len()
        );
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        s.write_all(head.as_bytes()).unwrap();
        let _ = s.write_all(body);
        let mut raw = Vec::new();
        let _ = s.read_to_end(&mut raw);
        let text = String::from_utf8_lossy(&raw).to_string();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no HTTP response: {text:?}"));
        let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
        let json = serde_json::from_str(body).unwrap_or(serde_json::Value::Null);
        (status, head.to_ascii_lowercase(), json)
    }

    pub(crate) fn get(&self, path: &str) -> (u16, serde_json::Value) {
        let (s, _, j) = self.request("GET", path, &[], b"");
        (s, j)
    }

    /// Scores with the endpoint's primary key (when the endpoint exists).
    pub(crate) fn score(&self, name: &str, body: &str) -> (u16, String, serde_json::Value) {
        self.score_with(name, &[], body)
    }

    pub(crate) fn score_with(&self, name: &str, headers: &[(&str, &str)], body: &str) -> (u16, String, serde_json::Value) {
        let auth = self.key(name).map(|k| format!("Bearer {k}"));
        let mut all = vec![("Content-Type", "application/json")];
        if let Some(a) = &auth {
            all.push(("Authorization", a.as_str()));
        }
        all.extend_from_slice(headers);
        self.request("POST", &format!("/api/v1/service/{name}/score"), &all, body.as_bytes())
    }

    pub(crate) fn admin_token(&self) -> String {
        std::fs::read_to_string(self.data.path().join("admin.token"))
            .unwrap()
            .trim()
            .to_string()
    }

    /// The endpoint's primary key, if it exists.
    pub(crate) fn key(&self, endpoint: &str) -> Option<String> {
        let (status, keys) = self.get_admin(&format!("/admin/v1/endpoints/{endpoint}/keys"));
        (status == 200).then(|| keys["primaryKey"].as_str().unwrap().to_string())
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, and waits for the exit (at most 60 s); true if it exited 0.
    pub(crate) fn terminate(&mut self) -> bool {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.success();
            }
            assert!(Instant::now() < deadline, "wasmscore did not exit after SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub(crate) fn kill(mut self) -> tempfile::TempDir {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::mem::replace(&mut self.data, tempfile::tempdir().unwrap())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A server with endpoint iris: v1 (Rust iris, the default and the
/// control) and v2 (the same at 30%, a treatment).
pub(crate) fn iris_control_and_treatment() -> Server {
    let s = Server::start(&[]);
    s.deploy_ok("iris", iris_rust(), &[&model()], None);
    let (m, r) = (model(), iris_rust());
    s.cli_ok(&[
        "version",
        "create",
        "--endpoint",
        "iris",
        "--version",
        "v2",
        "--module",
        r.to_str().unwrap(),
        "--model",
        m.to_str().unwrap(),
        "--traffic",
        "30",
    ]);
    s.cli_ok(&["version", "update", "--endpoint", "iris", "--version", "v1", "--control"]);
    s
}

/// One scoring request with KEY on a fresh connection, from any thread;
/// its status, if it got one (none: refused or cut).
pub(crate) fn post_score(addr: &str, endpoint: &str, key: &str, headers: &[(&str, &str)], body: &str) -> Option<u16> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
    let mut head = format!(
        "POST /api/v1/service/{endpoint}/score HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer {key}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    head.push_str(body);
    s.write_all(head.as_bytes()).ok()?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).ok()?;
    String::from_utf8_lossy(&raw).split_whitespace().nth(1)?.parse().ok()
}

/// ONNX Runtime's own answer, from the onnxruntime wheel in .venv.
fn onnxruntime_reference(rows: &serde_json::Value) -> Vec<Vec<f64>> {
    let py = root().join(".venv/bin/python");
    let script = "import json,sys,numpy as np,onnxruntime as o\ns=o.InferenceSession(sys.argv[1],providers=['CPUExecutionProvider'])\nx=np.asarray(json.loads(sys.argv[2]),dtype=np.float32)\nprint(json.dumps(s.run(['probabilities'],{'X':x})[0].astype(float).tolist()))";
    let out = Command::new(py)
        .args(["-c", script])
        .arg(model())
        .arg(rows.to_string())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

pub(crate) fn error_code(j: &serde_json::Value) -> &str {
    j["error"]["code"].as_str().unwrap_or_else(|| panic!("not an error body: {j}"))
}

/// Python, Rust, JavaScript, C, and Rust through wasi-nn: the same answer.
#[test]
fn every_languages_iris_module_matches_onnxruntime() {
    let s = Server::start(&[]);
    for (name, module) in iris_modules() {
        s.deploy_ok(name, module, &[&model()], None);
    }
    let rows = serde_json::json!([[5.1, 3.5, 1.4, 0.2], [6.2, 3.4, 5.4, 2.3], [5.9, 3.0, 4.2, 1.5]]);
    let want = onnxruntime_reference(&rows);
    for (name, _) in iris_modules() {
        let (status, head, body) = s.score(name, &serde_json::json!({ "data": rows }).to_string());
        assert_eq!(status, 200, "{name}: {body}");
        assert!(head.contains("x-wasmscore-version: v1"), "{head}");
        let got = body["probabilities"].as_array().unwrap();
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(&want) {
            for (a, b) in g.as_array().unwrap().iter().zip(w) {
                assert!((a.as_f64().unwrap() - b).abs() < 1e-6, "{name}: {a} vs {b}");
            }
        }
    }
}

#[test]
fn malformed_json_is_400_from_the_modules_typed_error() {
    let s = Server::start(&[]);
    for (name, module) in iris_modules() {
        s.deploy_ok(name, module, &[&model()], None);
    }
    for (name, _) in iris_modules() {
        let (status, _, body) = s.score(name, r#"{"data": [[5.1, 3.5"#);
        assert_eq!(status, 400, "{name}: {body}");
        assert_eq!(error_code(&body), "bad_input");
        assert!(body["error"]["message"].as_str().unwrap().contains("malformed JSON"), "{body}");
        // A wrong shape is bad input too (ONNX Runtime's check, through the host).
        let (status, _, body) = s.score(name, r#"{"data": [[1, 2, 3]]}"#);
        assert_eq!(status, 400, "{name}: {body}");
        // And the service keeps serving.
        assert_eq!(s.score(name, r#"{"data": [[5.1, 3.5, 1.4, 0.2]]}"#).0, 200);
    }
}

#[test]
fn oversize_body_is_413_and_unknown_service_404() {
    let s = Server::start(&["--max-body-bytes", "1000"]);
    s.deploy_ok("iris", iris_rust(), &[&model()], None);
    let big = format!("{{\"data\": [{}]}}", vec!["[5.1, 3.5, 1.4, 0.2]"; 100].join(","));
    let (status, _, body) = s.score("iris", &big);
    assert_eq!(status, 413, "{body}");
    assert_eq!(error_code(&body), "payload_too_large");
    let (status, _, body) = s.score("nope", "{}");
    assert_eq!(status, 404);
    assert_eq!(error_code(&body), "not_found");
    let (status, _, body) = s.score_with("iris", &[("x-wasmscore-version", "v9")], "{}");
    assert_eq!(status, 404, "{body}");
    assert_eq!(s.get("/v2/health/live").0, 200);
    assert_eq!(s.score("iris", r#"{"data": [[5.1, 3.5, 1.4, 0.2]]}"#).0, 200);
}

#[test]
fn a_trap_is_500_and_the_next_request_is_served() {
    let s = Server::start(&[]);
    s.deploy_ok("hostile", &hostile(), &[], None);
    let (status, _, body) = s.score("hostile", "trap");
    assert_eq!(status, 500, "{body}");
    assert_eq!(error_code(&body), "module_trapped");
    let (status, _, body) = s.score("hostile", "hello");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["echo"], "hello");
    let (_, show) = s.get_admin("/admin/v1/endpoints/hostile");
    assert_eq!(show["versions"][0]["replaced"], 1, "{show}");
}

#[test]
fn an_endless_loop_is_504_after_the_timeout_and_the_service_keeps_serving() {
    let s = Server::start(&[]);
    s.deploy_ok("hostile", &hostile(), &[], Some(serde_json::json!({"scoring_timeout_ms": 300})));
    let started = Instant::now();
    let (status, _, body) = s.score("hostile", "loop");
    let took = started.elapsed();
    assert_eq!(status, 504, "{body}");
    assert_eq!(error_code(&body), "scoring_timeout");
    assert!(took >= Duration::from_millis(300) && took < Duration::from_secs(10), "{took:?}");
    assert_eq!(s.score("hostile", "again").0, 200);
}

#[test]
fn a_memory_bomb_is_stopped_at_the_limit() {
    let s = Server::start(&[]);
    s.deploy_ok("hostile", &hostile(), &[], Some(serde_json::json!({"memory_gb": 0.0625})));
    let (status, _, body) = s.score("hostile", "alloc");
    assert_eq!(status, 500, "{body}");
    assert_eq!(error_code(&body), "memory_limit_exceeded", "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("67108864"), "{body}");
    assert_eq!(s.score("hostile", "after").0, 200);
}

#[test]
fn host_files_and_environment_are_denied() {
    let s = Server::start(&[]);
    s.deploy_ok("hostile", &hostile(), &[], None);
    let (status, _, body) = s.score("hostile", "file");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["file"], "denied", "{body}");
    let (_, _, body) = s.score("hostile", "env");
    assert_eq!(body["env_vars"], 0, "{body}");
    assert_eq!(body["home"], false, "{body}");
}

#[test]
fn bad_deploys_fail_with_a_message_naming_the_file() {
    let s = Server::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    // A missing model file.
    let out = s.deploy("iris", iris_rust(), &[&dir.path().join("missing.onnx")], None);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("missing.onnx") && err.contains("does not exist"), "{err}");
    // A corrupt model file.
    let corrupt = dir.path().join("model.onnx");
    std::fs::write(&corrupt, b"this is not onnx").unwrap();
    let out = s.deploy("iris", iris_rust(), &[&corrupt], None);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("model file model.onnx"), "{err}");
    // A corrupt .wasm.
    let bad = dir.path().join("broken.wasm");
    std::fs::write(&bad, b"\0asm garbage").unwrap();
    let out = s.deploy("iris", &bad, &[], None);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("broken.wasm") && err.contains("not a valid WebAssembly component"),
        "{err}"
    );
    // A module whose init() fails (the model it loads is not shipped).
    let out = s.deploy("iris", iris_rust(), &[], None);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("init() failed") && err.contains("model.onnx"), "{err}");
    // Unknown deployment config keys are refused.
    let out = s.deploy("iris", iris_rust(), &[&model()], Some(serde_json::json!({"scoring_timeout": 5})));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown field"));
    // The version that never built is Failed, takes no traffic (503 with
    // the reason), shows its error, and the server still serves.
    let (status, _, body) = s.score("iris", "{}");
    assert_eq!(status, 503, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("Failed"), "{body}");
    let (_, show) = s.get_admin("/admin/v1/endpoints/iris");
    assert_eq!(show["versions"][0]["state"], "Failed", "{show}");
    assert!(show["versions"][0]["error"].as_str().unwrap().contains("init() failed"), "{show}");
    assert_eq!(s.get("/v2/health/live").0, 200);
}

#[test]
fn a_restart_restores_deployments_from_the_store_and_the_compile_cache() {
    let s = Server::start(&[]);
    s.deploy_ok("iris", iris_python(), &[&model()], None);
    assert_eq!(s.score("iris", r#"{"data": [[5.1, 3.5, 1.4, 0.2]]}"#).0, 200);
    // kill -9: nothing acknowledged may be lost.
    let data = s.kill();
    let s = Server::start_in(data, &[]);
    let (status, _, body) = s.score("iris", r#"{"data": [[5.1, 3.5, 1.4, 0.2]]}"#);
    assert_eq!(status, 200, "{body}");
    let (_, show) = s.get_admin("/admin/v1/endpoints/iris");
    assert_eq!(show["versions"][0]["compiled_from_cache"], true, "{show}");
}

#[test]
fn the_admin_api_needs_the_admin_token() {
    let s = Server::start(&[]);
    let (status, _, body) = s.request("GET", "/admin/v1/endpoints", &[], b"");
    assert_eq!(status, 401);
    assert_eq!(error_code(&body), "unauthorized");
    let (status, _, _) = s.request("GET", "/admin/v1/endpoints", &[("Authorization", "Bearer wrong")], b"");
    assert_eq!(status, 401);
    let (status, _) = s.get_admin("/admin/v1/endpoints");
    assert_eq!(status, 200);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(s.data.path().join("admin.token")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}

impl Server {
    pub(crate) fn get_admin(&self, path: &str) -> (u16, serde_json::Value) {
        let auth = format!("Bearer {}", self.admin_token());
        let (s, _, j) = self.request("GET", path, &[("Authorization", &auth)], b"");
        (s, j)
    }

    /// A 200 admin route's body as text (`/metrics`).
    pub(crate) fn get_admin_text(&self, path: &str) -> String {
        let mut c = TcpStream::connect(&self.addr).unwrap();
        write!(
            c,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer {}\r\n\r\n",
            self.admin_token()
        )
        .unwrap();
        let mut out = String::new();
        c.read_to_string(&mut out).unwrap();
        assert!(out.starts_with("HTTP/1.1 200"), "{out}");
        out.split_once("\r\n\r\n").unwrap().1.to_string()
    }
}
