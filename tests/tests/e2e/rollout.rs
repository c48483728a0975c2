//! Controlled rollout over HTTP with the real CLI: the seeds' three steps,
//! cohorts, the mirror, the rules, kill -9 during a deploy, and a steady
//! load while versions change.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{bin, hostile, iris_python, iris_rust, model, Server};

const ROW: &str = r#"{"data": [[5.1, 3.5, 1.4, 0.2]]}"#;

impl Server {
    /// Runs `wasmscore ARGS --data-dir DIR`.
    pub(crate) fn cli(&self, args: &[&str]) -> Output {
        Command::new(bin())
            .args(args)
            .arg("--data-dir")
            .arg(self.data.path())
            .output()
            .unwrap()
    }

    pub(crate) fn cli_ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "wasmscore {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Refused, with a message on stderr that contains `want`.
    fn cli_refused(&self, args: &[&str], want: &str) {
        let out = self.cli(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "wasmscore {args:?} should have failed");
        assert!(err.contains(want), "wasmscore {args:?}: {err:?} does not say {want:?}");
        assert_eq!(err.trim().lines().count(), 1, "one line: {err:?}");
    }

    /// Scores `n` requests; counts the versions that served them.
    fn shares(&self, endpoint: &str, n: usize, headers: &[(&str, &str)]) -> HashMap<String, usize> {
        let mut conn = KeepAlive::connect(self);
        let mut counts = HashMap::new();
        for _ in 0..n {
            let (status, version) = conn.score(endpoint, headers, ROW);
            assert_eq!(status, 200);
            *counts.entry(version).or_insert(0) += 1;
        }
        counts
    }

    pub(crate) fn show(&self, endpoint: &str) -> serde_json::Value {
        let (status, v) = self.get_admin(&format!("/admin/v1/endpoints/{endpoint}"));
        assert_eq!(status, 200, "{v}");
        v
    }
}

fn count(c: &HashMap<String, usize>, v: &str) -> usize {
    c.get(v).copied().unwrap_or(0)
}

/// An HTTP/1.1 client on one kept-alive connection.
pub(crate) struct KeepAlive {
    r: BufReader<TcpStream>,
    addr: String,
    admin_token: String,
    /// Each endpoint's primary key, asked of the admin API once.
    keys: HashMap<String, Option<String>>,
}

impl KeepAlive {
    /// A connection to `s` that sends each endpoint's primary key.
    pub(crate) fn connect(s: &Server) -> KeepAlive {
        Self::connect_to(&s.addr, &s.admin_token())
    }

    pub(crate) fn connect_to(addr: &str, admin_token: &str) -> KeepAlive {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        s.set_nodelay(true).unwrap();
        KeepAlive {
            r: BufReader::new(s),
            addr: addr.to_string(),
            admin_token: admin_token.to_string(),
            keys: HashMap::new(),
        }
    }

    fn key(&mut self, endpoint: &str) -> Option<String> {
        if let Some(k) = self.keys.get(endpoint) {
            return k.clone();
        }
        let mut c = TcpStream::connect(&self.addr).unwrap();
        write!(
            c,
            "GET /admin/v1/endpoints/{endpoint}/keys HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer {}\r\n\r\n",
            self.admin_token
        )
        .unwrap();
        let mut out = String::new();
        c.read_to_string(&mut out).unwrap();
        let key = out
            .starts_with("HTTP/1.1 200")
            .then(|| out.split_once("\r\n\r\n"))
            .flatten()
            .and_then(|(_, b)| serde_json::from_str::<serde_json::Value>(b).ok())
            .and_then(|v| v["primaryKey"].as_str().map(str::to_string));
        self.keys.insert(endpoint.to_string(), key.clone());
        key
    }

    /// Returns the status and the served-version header.
    fn score(&mut self, endpoint: &str, headers: &[(&str, &str)], body: &str) -> (u16, String) {
        let (status, version, _) = self.score_full(endpoint, headers, body);
        (status, version)
    }

    /// Returns the status, the served-version header and Retry-After.
    pub(crate) fn score_full(&mut self, endpoint: &str, headers: &[(&str, &str)], body: &str) -> (u16, String, Option<String>) {
        let mut req = format!(
            "POST /api/v1/service/{endpoint}/score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        );
        if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("authorization")) {
            if let Some(key) = self.key(endpoint) {
                req.push_str(&format!("Authorization: Bearer {key}\r\n"));
            }
        }
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        req.push_str(body);
        self.r.get_mut().write_all(req.as_bytes()).unwrap();
        let mut status = 0;
        let mut len = 0;
        let mut version = String::new();
        let mut retry_after = None;
        loop {
            let mut line = String::new();
            self.r.read_line(&mut line).unwrap();
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if status == 0 {
                status = line.split_whitespace().nth(1).unwrap().parse().unwrap();
            } else if let Some((k, v)) = line.split_once(':') {
                match k.to_ascii_lowercase().as_str() {
                    "content-length" => len = v.trim().parse().unwrap(),
                    "x-wasmscore-version" => version = v.trim().to_string(),
                    "retry-after" => retry_after = Some(v.trim().to_string()),
                    _ => {}
                }
            }
        }
        let mut body = vec![0; len];
        self.r.read_exact(&mut body).unwrap();
        (status, version, retry_after)
    }
}

fn module(p: &Path) -> String {
    p.display().to_string()
}

#[test]
fn the_seeds_three_rollout_steps_hold_their_shares() {
    let s = Server::start(&[]);
    let (rs, m) = (module(iris_rust()), module(&model()));
    // A at 20% is the first version, so the default: it gets everything.
    s.cli_ok(&[
        "version",
        "create",
        "--endpoint",
        "iris",
        "--version",
        "A",
        "--module",
        &rs,
        "--model",
        &m,
        "--traffic",
        "20",
    ]);
    let c = s.shares("iris", 1000, &[]);
    assert_eq!(count(&c, "A"), 1000, "{c:?}");
    // Add B at 10%: A 90%, B 10%. The split is a smooth weighted round robin
    // over 100 slots, so 1000 requests are exactly 900 / 100.
    s.cli_ok(&[
        "version",
        "create",
        "--endpoint",
        "iris",
        "--version",
        "B",
        "--module",
        &rs,
        "--model",
        "model",
        "--traffic",
        "10",
    ]);
    let c = s.shares("iris", 1000, &[]);
    assert_eq!((count(&c, "A"), count(&c, "B")), (900, 100), "{c:?}");
    // Update B to 40% and make it the default: A 20%, B 80%.
    s.cli_ok(&[
        "version",
        "update",
        "--endpoint",
        "iris",
        "--version",
        "B",
        "--traffic",
        "40",
        "--default",
    ]);
    let c = s.shares("iris", 1000, &[]);
    assert_eq!((count(&c, "A"), count(&c, "B")), (200, 800), "{c:?}");
    let show = s.show("iris");
    assert_eq!(show["default_version"], "B");
    assert_eq!(show["traffic"]["A"], 20);
    assert_eq!(show["traffic"]["B"], 80);
    // Delete A: B takes everything.
    s.cli_ok(&["version", "delete", "--endpoint", "iris", "--version", "A", "--wait"]);
    let c = s.shares("iris", 200, &[]);
    assert_eq!(count(&c, "B"), 200, "{c:?}");
    // A pinned version that no longer exists is 404; the one there is served.
    let mut conn = KeepAlive::connect(&s);
    assert_eq!(conn.score("iris", &[("x-wasmscore-version", "A")], ROW).0, 404);
    assert_eq!(conn.score("iris", &[("x-wasmscore-version", "B")], ROW), (200, "B".into()));
}

#[test]
fn a_cohort_keeps_its_version_and_pinning_wins() {
    let s = Server::start(&[]);
    let (rs, m) = (module(iris_rust()), module(&model()));
    s.cli_ok(&[
        "version",
        "create",
        "--endpoint",
        "iris",
        "--version",
        "A",
        "--module",
        &rs,
        "--model",
        &m,
    ]);
    s.cli_ok(&[
        "version",
        "create",
        "--endpoint",
        "iris",
        "--version",
        "B",
        "--module",
        &rs,
        "--model",
        "model:1",
        "--traffic",
        "50",
    ]);
    let mut conn = KeepAlive::connect(&s);
    let mut per_version = HashMap::new();
    for user in 0..60 {
        let key = format!("user-{user}");
        let first = conn.score("iris", &[("x-wasmscore-cohort", &key)], ROW).1;
        for _ in 0..5 {
            assert_eq!(conn.score("iris", &[("x-wasmscore-cohort", &key)], ROW).1, first, "{key} moved");
        }
        *per_version.entry(first).or_insert(0) += 1;
    }
    // Both versions get cohorts (60 keys on a 50/50 split).
    assert!(count(&per_version, "A") >= 15 && count(&per_version, "B") >= 15, "{per_version:?}");
    // A pin beats the cohort.
    assert_eq!(
        conn.score("iris", &[("x-wasmscore-cohort", "user-1"), ("x-wasmscore-version", "A")], ROW)
            .1,
        "A"
    );
}

#[test]
fn the_mirror_gets_its_share_and_its_failures_never_reach_clients() {
    let s = Server::start(&[]);
    // Live traffic goes to an echo module; the mirror is the iris module,
    // which refuses the echo body (400): every mirrored copy fails.
    s.cli_ok(&[
        "version",
        "create",
        "--endpoint",
        "e",
        "--version",
        "live",
        "--module",
        &module(&hostile()),
    ]);
    s.cli_ok(&[
        "version",
        "create",
        "--endpoint",
        "e",
        "--version",
        "shadow",
        "--module",
        &module(iris_rust()),
        "--model",
        &module(&model()),
        "--mirror",
        "20",
    ]);
    let mut conn = KeepAlive::connect(&s);
    for _ in 0..500 {
        assert_eq!(conn.score("e", &[], "hello"), (200, "live".into()));
    }
    // The copies run after the answers; wait for them to land.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let show = s.show("e");
        let shadow = show["versions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == "shadow")
            .unwrap()
            .clone();
        if shadow["served"] == 100 {
            assert_eq!(show["mirror"]["percent"], 20);
            break;
        }
        assert!(Instant::now() < deadline, "the mirror served {} of 100: {show}", shadow["served"]);
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn every_rule_violation_is_refused_with_the_rule() {
    let s = Server::start(&[]);
    let (rs, m) = (module(iris_rust()), module(&model()));
    s.cli_ok(&[
        "version",
        "create",
        "--endpoint",
        "r",
        "--version",
        "a",
        "--module",
        &rs,
        "--model",
        &m,
        "--traffic",
        "60",
    ]);
    let create = |v: &str, extra: &[&str], want: &str| {
        let mut args = vec![
            "version",
            "create",
            "--endpoint",
            "r",
            "--version",
            v,
            "--module",
            &rs,
            "--model",
            "model",
        ];
        args.extend_from_slice(extra);
        s.cli_refused(&args, want);
    };
    create("b", &["--traffic", "50"], "add up to 110%");
    create("b", &["--traffic", "101"], "0 to 100");
    create("a", &[], "already exists");
    create("m", &["--mirror", "60"], "at most 50%");
    create("m", &["--mirror", "10", "--default"], "cannot be the default");
    s.cli_refused(
        &["version", "update", "--endpoint", "r", "--version", "a", "--default", "false"],
        "always has one",
    );
    s.cli_refused(
        &["version", "update", "--endpoint", "r", "--version", "zz", "--traffic", "1"],
        "no version",
    );
    for v in ["b", "c", "d", "e", "f"] {
        s.cli_ok(&[
            "version",
            "create",
            "--endpoint",
            "r",
            "--version",
            v,
            "--module",
            &rs,
            "--model",
            "model",
            "--traffic",
            "1",
            "--no-wait",
        ]);
    }
    create("g", &[], "at most 6 versions");
    s.cli_refused(
        &["version", "delete", "--endpoint", "r", "--version", "a"],
        "name another version to become the default",
    );
    s.cli_ok(&["version", "delete", "--endpoint", "r", "--version", "a", "--new-default", "b"]);
    assert_eq!(s.show("r")["default_version"], "b");
    // The model in use cannot go.
    s.cli_refused(&["model", "delete", "model:1"], "is used by");
    // Nothing refused changed what serves.
    assert_eq!(s.score("r", ROW).0, 200);
}

#[test]
fn kill_9_during_a_deploy_loses_nothing_acknowledged() {
    let s = Server::start(&[]);
    let (rs, m) = (module(iris_rust()), module(&model()));
    s.cli_ok(&[
        "version",
        "create",
        "--endpoint",
        "k",
        "--version",
        "A",
        "--module",
        &rs,
        "--model",
        &m,
        "--tag",
        "team=fraud",
    ]);
    s.cli_ok(&["model", "register", &m, "--name", "iris", "--description", "the iris classifier"]);
    // Acknowledged (committed), then killed while it builds.
    s.cli_ok(&[
        "version",
        "create",
        "--endpoint",
        "k",
        "--version",
        "B",
        "--module",
        &module(iris_python()),
        "--model",
        "iris:1",
        "--traffic",
        "30",
        "--no-wait",
    ]);
    let data = s.kill();
    let s = Server::start_in(data, &[]);
    let show = s.show("k");
    let names: Vec<&str> = show["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["A", "B"], "{show}");
    assert_eq!(show["versions"][0]["tags"]["team"], "fraud");
    assert_eq!(show["versions"][1]["traffic"], 30);
    assert_eq!(show["versions"][1]["state"], "Healthy", "{show}");
    let models = s.cli_ok(&["model", "list", "--json"]);
    assert!(models.contains("iris:1") && models.contains("the iris classifier"), "{models}");
    let c = s.shares("k", 100, &[]);
    assert_eq!((count(&c, "A"), count(&c, "B")), (70, 30), "{c:?}");
}

#[test]
fn kill_9_during_an_update_that_then_fails_leaves_the_version_serving_what_it_served() {
    let s = Server::start(&[]);
    let (rs, m) = (module(iris_rust()), module(&model()));
    s.cli_ok(&[
        "version",
        "create",
        "--endpoint",
        "u",
        "--version",
        "A",
        "--module",
        &rs,
        "--model",
        &m,
    ]);
    assert_eq!(s.score("u", ROW).0, 200);
    let served = s.show("u")["versions"][0]["module_sha256"].clone();
    // An update whose init() fails after 3 s: acknowledged, then the
    // process is killed while it builds, before it could go back.
    let dc = s.data.path().join("failing-dc.json");
    std::fs::write(
        &dc,
        r#"{"environment_variables": {"INIT_SLEEP_MS": "3000", "INIT_FAIL": "broken on purpose"}}"#,
    )
    .unwrap();
    s.cli_ok(&[
        "version",
        "update",
        "--endpoint",
        "u",
        "--version",
        "A",
        "--module",
        &module(&hostile()),
        "--dc",
        dc.to_str().unwrap(),
        "--no-wait",
    ]);
    let data = s.kill();
    let s = Server::start_in(data, &[]);
    let t = Instant::now();
    loop {
        let show = s.show("u");
        let v = &show["versions"][0];
        if v["state"] == "Healthy" && v["module_sha256"] == served && v["serving_module_sha256"] == served {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "the version did not go back to the module it served: {show}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let (status, _, answer) = s.score("u", ROW);
    assert_eq!(status, 200, "{answer}");
    assert!(answer.to_string().contains("probabilities"), "iris answers: {answer}");
    let logs = s.cli_ok(&["service", "logs", "u", "--json"]);
    assert!(
        logs.contains("broken on purpose") && logs.contains("going back to the deployment that served before it"),
        "{logs}"
    );
}

#[test]
fn a_steady_load_sees_no_failure_while_versions_change() {
    let s = Server::start(&[]);
    let (rs, m) = (module(iris_rust()), module(&model()));
    s.cli_ok(&[
        "version",
        "create",
        "--endpoint",
        "live",
        "--version",
        "v1",
        "--module",
        &rs,
        "--model",
        &m,
    ]);
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(HashMap::<(u16, String), usize>::new()));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (addr, token, stop, seen) = (s.addr.clone(), s.admin_token(), stop.clone(), seen.clone());
            std::thread::spawn(move || {
                let mut conn = KeepAlive::connect_to(&addr, &token);
                let mut local = HashMap::new();
                while !stop.load(Ordering::Relaxed) {
                    *local.entry(conn.score("live", &[], ROW)).or_insert(0) += 1;
                }
                let mut all = seen.lock().unwrap();
                for (k, n) in local {
                    *all.entry(k).or_insert(0) += n;
                }
            })
        })
        .collect();
    let steps: &[&[&str]] = &[
        &[
            "version",
            "create",
            "--endpoint",
            "live",
            "--version",
            "v2",
            "--module",
            &rs,
            "--model",
            "model",
            "--traffic",
            "10",
        ],
        &[
            "version",
            "update",
            "--endpoint",
            "live",
            "--version",
            "v2",
            "--traffic",
            "50",
            "--default",
        ],
        &[
            "version",
            "create",
            "--endpoint",
            "live",
            "--version",
            "v3",
            "--module",
            &rs,
            "--model",
            "model",
            "--traffic",
            "20",
        ],
        // A rebuild of v3 (new config): the old v3 serves until the new one is up.
        &["version", "update", "--endpoint", "live", "--version", "v3", "--dc", "__dc__"],
        &["version", "delete", "--endpoint", "live", "--version", "v1"],
        &["deploy", "--name", "live", "--module", &rs, "--model", "model"],
        &["version", "delete", "--endpoint", "live", "--version", "v3"],
    ];
    let dc = s.data.path().join("dc.json");
    std::fs::write(&dc, r#"{"num_replicas": 2}"#).unwrap();
    let dc = dc.display().to_string();
    for step in steps {
        let args: Vec<&str> = step.iter().map(|a| if *a == "__dc__" { dc.as_str() } else { a }).collect();
        s.cli_ok(&args);
        std::thread::sleep(Duration::from_millis(300));
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    let seen = seen.lock().unwrap();
    let failed: usize = seen.iter().filter(|((st, _), _)| *st != 200).map(|(_, n)| n).sum();
    let total: usize = seen.values().sum();
    assert_eq!(failed, 0, "{seen:?}");
    assert!(total > 500, "{seen:?}");
    for v in ["v1", "v2", "v3"] {
        assert!(seen.keys().any(|(_, name)| name == v), "{v} never served: {seen:?}");
    }
    assert_eq!(s.show("live")["default_version"], "v2");
}

#[test]
fn azure_mls_config_files_are_mapped_and_what_is_left_out_is_named() {
    let s = Server::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(super::root().join("examples/iris-python/score.py"), dir.path().join("score.py")).unwrap();
    let ic = dir.path().join("inferenceconfig.json");
    std::fs::write(&ic, r#"{"entryScript": "score.py", "runtime": "python", "condaFile": "myenv.yml"}"#).unwrap();
    let dc = dir.path().join("deploymentconfig.json");
    std::fs::write(
        &dc,
        r#"{"computeType": "aks", "autoScaler": {"autoscaleEnabled": false}, "containerResourceRequirements": {"cpu": 0.5, "memoryInGB": 1.0},
            "scoringTimeoutMs": 5000, "maxQueueWaitMs": 300, "numReplicas": 2, "authEnabled": true, "description": "from Azure ML"}"#,
    )
    .unwrap();
    let out = Command::new(bin())
        .args(["deploy", "--name", "az", "--data-dir"])
        .arg(s.data.path())
        .arg("--ic")
        .arg(&ic)
        .arg("--dc")
        .arg(&dc)
        .args(["--model", &module(&model()), "--json"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    for want in [
        "mapped entryScript -> module",
        "ignored condaFile",
        "mapped scoringTimeoutMs -> scoring_timeout_ms",
        "mapped containerResourceRequirements.memoryInGB -> memory_gb",
        "ignored computeType",
        "mapped autoScaler.autoscaleEnabled -> autoscale_enabled",
        "mapped containerResourceRequirements.cpu -> cpu_cores",
        "mapped authEnabled -> auth_enabled",
    ] {
        assert!(err.contains(want), "{want:?} not in {err}");
    }
    let show: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let v = &show["versions"][0];
    assert_eq!(v["config"]["scoring_timeout_ms"], 5000, "{show}");
    // num_replicas: 2 is the target; deploy returns once the first serves,
    // and the second comes up beside it.
    assert_eq!(v["target_replicas"], 2, "{show}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, now) = s.get_admin("/admin/v1/endpoints/az");
        if now["versions"][0]["replicas"] == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "the second replica never came up: {now}");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(v["autoscale"]["enabled"], false, "{show}");
    assert_eq!(v["resources"]["cpu_cores"], 0.5, "{show}");
    assert_eq!(v["description"], "from Azure ML");
    assert_eq!(s.score("az", ROW).0, 200);
}
