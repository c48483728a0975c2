//! Across the network, with real processes on 127.0.0.1: a registry
//! (Debian's docker-registry), `wasmscore push`, `wasmscore node` processes
//! pulling by digest, and `wasmscore router` in front of them. The seeds'
//! rollout steps over the network, cohorts, the mirror, key auth at the
//! router, and the faults: kill -9 and SIGTERM of a node under load, every
//! node of a version gone, a node that answers garbage or hangs, a slow
//! node, a bad artifact or an unreachable registry, the router restarted.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::autoscale::one_at_a_time;
use super::{bin, clients_python, hostile, iris_rust, model, root};

pub(crate) const ROW: &str = r#"{"data": [[5.1, 3.5, 1.4, 0.2]]}"#;
const KEY: &str = "router-primary-key-0123456789";
const KEY2: &str = "router-secondary-key-0123456789";

/// A port nothing listens on now, and that this process has not handed out
/// before: the kernel may give the same free port twice, and two servers of
/// one test (or of two tests running at once) must not be told the same.
pub(crate) fn free_port() -> u16 {
    static GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap();
    loop {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

pub(crate) fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A child process, killed when dropped; its stderr goes to a log file.
pub(crate) struct Proc {
    child: Option<Child>,
    log: PathBuf,
}

impl Proc {
    pub(crate) fn spawn(cmd: &mut Command, log: PathBuf) -> Proc {
        let f = std::fs::File::create(&log).unwrap();
        let child = cmd.stdout(Stdio::null()).stderr(f).spawn().unwrap();
        Proc { child: Some(child), log }
    }

    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub(crate) fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().unwrap().id().to_string();
        assert!(Command::new("kill").args([sig, &pid]).status().unwrap().success());
    }

    pub(crate) fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Waits for it to exit; its status.
    pub(crate) fn wait(&mut self, limit: Duration) -> std::process::ExitStatus {
        let c = self.child.as_mut().unwrap();
        let deadline = Instant::now() + limit;
        loop {
            if let Some(st) = c.try_wait().unwrap() {
                self.child = None;
                return st;
            }
            assert!(Instant::now() < deadline, "process did not exit: {}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A plain GET or POST over a fresh connection: status, head, body.
pub(crate) fn http(addr: &str, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> (u16, String, String) {
    let Ok(mut s) = TcpStream::connect(addr) else {
        return (0, String::new(), "connection refused".into());
    };
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    if s.write_all(req.as_bytes()).is_err() {
        return (0, String::new(), "write failed".into());
    }
    let mut raw = String::new();
    let _ = s.read_to_string(&mut raw);
    let Some((head, body)) = raw.split_once("\r\n\r\n") else {
        return (0, String::new(), raw);
    };
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, head.to_ascii_lowercase(), body.to_string())
}

pub(crate) fn header(head: &str, name: &str) -> String {
    head.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
        .unwrap_or("")
        .to_string()
}

pub(crate) struct Registry {
    _proc: Proc,
    pub(crate) addr: String,
    root: tempfile::TempDir,
}

impl Registry {
    fn start_on(port: u16) -> Registry {
        let root = tempfile::tempdir().unwrap();
        let storage = root.path().join("storage");
        Self::serve(port, root, &storage)
    }

    /// A second registry process on `port` serving `other`'s storage: what
    /// was pushed there is present the moment it answers.
    fn serving_copy_of(other: &Registry, port: u16) -> Registry {
        Self::serve(port, tempfile::tempdir().unwrap(), &other.root.path().join("storage"))
    }

    fn serve(port: u16, root: tempfile::TempDir, storage: &Path) -> Registry {
        let addr = format!("127.0.0.1:{port}");
        let proc = docker_registry(root.path(), storage, &addr, "");
        wait_for("the registry", Duration::from_secs(20), || {
            http(&addr, "GET", "/v2/", &[], "").0 == 200
        });
        Registry { _proc: proc, addr, root }
    }

    pub(crate) fn start() -> Registry {
        Self::start_on(free_port())
    }

    /// `wasmscore push`; the digest it prints.
    pub(crate) fn push(&self, tag: &str, module: &Path, models: &[&Path], dc: Option<&Value>) -> String {
        let mut cmd = Command::new(bin());
        cmd.args([
            "push",
            "--insecure",
            "--json",
            "--registry",
            &format!("{}/{tag}", self.addr),
            "--module",
        ])
        .arg(module);
        for m in models {
            cmd.arg("--model").arg(m);
        }
        let dc_file = self.root.path().join(format!("{}.json", tag.replace([':', '/'], "-")));
        if let Some(dc) = dc {
            std::fs::write(&dc_file, dc.to_string()).unwrap();
            cmd.arg("--dc").arg(&dc_file);
        }
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "push failed: {}", String::from_utf8_lossy(&out.stderr));
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        let digest = v["digest"].as_str().unwrap().to_string();
        assert!(digest.starts_with("sha256:") && digest.len() == 71, "{digest}");
        digest
    }

    pub(crate) fn reference(&self, repo: &str, digest: &str) -> String {
        format!("{}/{repo}@{digest}", self.addr)
    }
}

/// Debian's docker-registry on `addr`, its config and log in `dir`;
/// `more` is YAML that follows `http: addr:` (its `tls:`, an `auth:`).
fn docker_registry(dir: &Path, storage: &Path, addr: &str, more: &str) -> Proc {
    let cfg = dir.join("registry.yml");
    std::fs::write(
        &cfg,
        format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\n{more}",
            storage.display()
        ),
    )
    .unwrap();
    let exe = ["/usr/bin/docker-registry", "/usr/sbin/docker-registry"]
        .into_iter()
        .find(|p| Path::new(p).is_file())
        .expect("docker-registry is missing: ./test.sh installs it (Debian package docker-registry)");
    Proc::spawn(Command::new(exe).arg("serve").arg(&cfg), dir.join("registry.log"))
}

/// The shared compile cache of the nodes the tests start.
pub(crate) fn node_cache() -> PathBuf {
    root().join("target/e2e-node-cache")
}

struct Node {
    proc: Proc,
    addr: String,
    _dir: tempfile::TempDir,
}

impl Node {
    fn spawn(args: &[&str], port: u16) -> Node {
        Self::spawn_with(args, port, &[])
    }

    fn spawn_with(args: &[&str], port: u16, env: &[(&str, &str)]) -> Node {
        let dir = tempfile::tempdir().unwrap();
        let proc = Proc::spawn(
            Command::new(bin())
                .envs(env.iter().copied())
                .arg("node")
                .args(args)
                .args(["--port", &port.to_string(), "--data-dir"])
                .arg(dir.path().join("data"))
                .arg("--cache-dir")
                .arg(node_cache()),
            dir.path().join("node.log"),
        );
        Node {
            proc,
            addr: format!("127.0.0.1:{port}"),
            _dir: dir,
        }
    }

    fn artifact(reference: &str) -> Node {
        Self::artifact_on(reference, free_port())
    }

    fn artifact_on(reference: &str, port: u16) -> Node {
        let n = Self::spawn(&["--artifact", reference, "--insecure"], port);
        n.wait_ready();
        n
    }

    /// A node of the hostile test module from its file (no registry).
    fn hostile_on(port: u16) -> Node {
        Self::hostile_with(port, &[])
    }

    fn hostile_with(port: u16, env: &[(&str, &str)]) -> Node {
        let m = hostile();
        let n = Self::spawn_with(&["--module", m.to_str().unwrap()], port, env);
        n.wait_ready();
        n
    }

    fn ready(&self) -> (u16, String) {
        let (s, _, b) = http(&self.addr, "GET", "/v2/health/ready", &[], "");
        (s, b)
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(120);
        while self.ready().0 != 200 {
            assert!(Instant::now() < deadline, "node never became ready: {}", self.proc.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Router starts, so a restarted router logs to a new file.
static STARTS: AtomicU64 = AtomicU64::new(0);

struct Router {
    proc: Proc,
    addr: String,
    port: u16,
    config: PathBuf,
    dir: tempfile::TempDir,
}

fn endpoint(name: &str, versions: Value) -> Value {
    json!({"name": name, "auth": {"mode": "key", "primary_key": KEY, "secondary_key": KEY2}, "versions": versions})
}

impl Router {
    fn start(config: &Value, extra: &[&str]) -> Router {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("router.json");
        std::fs::write(&cfg, config.to_string()).unwrap();
        Self::start_in(dir, cfg, free_port(), extra)
    }

    fn start_in(dir: tempfile::TempDir, config: PathBuf, port: u16, extra: &[&str]) -> Router {
        let proc = Proc::spawn(
            Command::new(bin())
                .args(["router", "--port", &port.to_string(), "--config"])
                .arg(&config)
                .arg("--data-dir")
                .arg(dir.path().join("data"))
                .args(extra),
            dir.path().join(format!("router-{}.log", STARTS.fetch_add(1, Ordering::Relaxed))),
        );
        let r = Router {
            proc,
            addr: format!("127.0.0.1:{port}"),
            port,
            config,
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while http(&r.addr, "GET", "/v2/health/ready", &[], "").0 != 200 {
            assert!(Instant::now() < deadline, "router never became ready: {}", r.proc.log());
            std::thread::sleep(Duration::from_millis(20));
        }
        r
    }

    /// A router whose one endpoint `t` has one version, v1, on `n`.
    /// One version on `n`, its default without saying so (its only one).
    fn in_front_of(n: &Node, extra: &[&str]) -> Router {
        Self::start(
            &json!({"endpoints": [endpoint("t", json!([{"name": "v1", "nodes": [n.addr]}]))]}),
            extra,
        )
    }

    fn admin_token(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("data/admin.token")).unwrap()
    }

    fn status(&self) -> Value {
        let auth = format!("Bearer {}", self.admin_token());
        let (s, _, b) = http(&self.addr, "GET", "/admin/v1/status", &[("Authorization", &auth)], "");
        assert_eq!(s, 200, "{b}");
        serde_json::from_str(&b).unwrap()
    }

    fn version_status(&self, endpoint: &str, version: &str) -> Value {
        let st = self.status();
        st["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == endpoint)
            .and_then(|e| e["versions"].as_array().unwrap().iter().find(|v| v["name"] == version).cloned())
            .unwrap_or(Value::Null)
    }

    /// Writes a new config (atomically) and waits until the router serves
    /// the effective shares `want` for `endpoint`.
    fn reconfigure(&self, config: &Value, endpoint: &str, want: &[(&str, u64)]) {
        self.rewrite(config);
        self.wait_shares(endpoint, want);
    }

    /// Writes a new config (atomically) for the router to re-read.
    fn rewrite(&self, config: &Value) {
        let tmp = self.config.with_extension("tmp");
        std::fs::write(&tmp, config.to_string()).unwrap();
        std::fs::rename(&tmp, &self.config).unwrap();
    }

    fn wait_shares(&self, endpoint: &str, want: &[(&str, u64)]) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let want: Vec<(String, u64)> = want.iter().map(|(n, s)| (n.to_string(), *s)).collect();
        loop {
            let st = self.status();
            let got: Option<Vec<(String, u64)>> = st["endpoints"]
                .as_array()
                .unwrap()
                .iter()
                .find(|e| e["name"] == endpoint)
                .map(|ep| {
                    ep["versions"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|v| (v["name"].as_str().unwrap().to_string(), v["effective_traffic"].as_u64().unwrap()))
                        .filter(|(_, s)| *s > 0)
                        .collect()
                });
            if got.as_ref() == Some(&want) {
                return;
            }
            // What the router said and logged, to tell a missed config
            // change from a node that did not come back.
            assert!(
                Instant::now() < deadline,
                "timed out waiting for shares {want:?}; last status {st}\nrouter log:\n{}",
                self.proc.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn score(&self, endpoint: &str, headers: &[(&str, &str)], body: &str) -> (u16, String, String) {
        let auth = format!("Bearer {KEY}");
        let mut h = vec![("Authorization", auth.as_str()), ("Content-Type", "application/json")];
        h.extend_from_slice(headers);
        let (s, head, b) = http(&self.addr, "POST", &format!("/api/v1/service/{endpoint}/score"), &h, body);
        (s, header(&head, "x-wasmscore-version"), b)
    }

    /// Versions that served `n` requests on one kept-alive connection.
    fn shares(&self, endpoint: &str, n: usize, headers: &[(&str, &str)]) -> HashMap<String, usize> {
        let mut c = Client::connect(&self.addr);
        let mut counts = HashMap::new();
        for _ in 0..n {
            let (status, version, body) = c.score(endpoint, headers, ROW).expect("connection kept");
            assert_eq!(status, 200, "{body}");
            *counts.entry(version).or_insert(0) += 1;
        }
        counts
    }
}

/// An HTTP/1.1 client on one kept-alive connection that reports, rather
/// than panics on, a broken connection.
struct Client {
    r: BufReader<TcpStream>,
}

impl Client {
    fn connect(addr: &str) -> Client {
        Self::try_connect(addr).expect("connect")
    }

    fn try_connect(addr: &str) -> Option<Client> {
        let s = TcpStream::connect(addr).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
        s.set_nodelay(true).ok()?;
        Some(Client { r: BufReader::new(s) })
    }

    /// Status, served version and body; None when the connection broke.
    fn score(&mut self, endpoint: &str, headers: &[(&str, &str)], body: &str) -> Option<(u16, String, String)> {
        let mut req = format!(
            "POST /api/v1/service/{endpoint}/score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nAuthorization: Bearer {KEY}\r\nContent-Length: {}\r\n",
            body.len()
        );
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        req.push_str(body);
        self.r.get_mut().write_all(req.as_bytes()).ok()?;
        let (mut status, mut len, mut version) = (0u16, 0usize, String::new());
        loop {
            let mut line = String::new();
            if self.r.read_line(&mut line).ok()? == 0 {
                return None;
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if status == 0 {
                status = line.split_whitespace().nth(1)?.parse().ok()?;
            } else if let Some((k, v)) = line.split_once(':') {
                match k.to_ascii_lowercase().as_str() {
                    "content-length" => len = v.trim().parse().ok()?,
                    "x-wasmscore-version" => version = v.trim().to_string(),
                    _ => {}
                }
            }
        }
        let mut b = vec![0; len];
        self.r.read_exact(&mut b).ok()?;
        Some((status, version, String::from_utf8_lossy(&b).into_owned()))
    }
}

/// One request's outcome: when it ended (ms since the load started), its
/// status (0 for a broken connection), the version that served it, and
/// the body when it is not a 200.
type Outcome = (u64, u16, String, String);

/// Closed-loop clients that keep going through failures: each request's
/// outcome is recorded with when it ended (ms since the load started).
struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    started: Instant,
    /// (ms, status or 0 for a broken connection, version, body if not 200)
    log: Arc<Mutex<Vec<Outcome>>>,
}

impl Load {
    fn start(addr: &str, endpoint: &str, clients: usize, body: &'static str) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let log = Arc::new(Mutex::new(Vec::new()));
        let started = Instant::now();
        let threads = (0..clients)
            .map(|_| {
                let (addr, endpoint, stop, log) = (addr.to_string(), endpoint.to_string(), stop.clone(), log.clone());
                std::thread::spawn(move || {
                    let mut conn: Option<Client> = None;
                    while !stop.load(Ordering::Relaxed) {
                        let c = match conn.as_mut() {
                            Some(c) => c,
                            None => match Client::try_connect(&addr) {
                                Some(c) => conn.insert(c),
                                None => {
                                    log.lock().unwrap().push((
                                        started.elapsed().as_millis() as u64,
                                        0,
                                        String::new(),
                                        "connect refused".into(),
                                    ));
                                    std::thread::sleep(Duration::from_millis(20));
                                    continue;
                                }
                            },
                        };
                        let outcome = c.score(&endpoint, &[], body);
                        let ms = started.elapsed().as_millis() as u64;
                        match outcome {
                            Some((status, version, body)) => {
                                let body = if status == 200 { String::new() } else { body };
                                log.lock().unwrap().push((ms, status, version, body));
                            }
                            None => {
                                log.lock().unwrap().push((ms, 0, String::new(), "connection broke".into()));
                                conn = None;
                            }
                        }
                    }
                })
            })
            .collect();
        Load {
            stop,
            threads,
            started,
            log,
        }
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn stop(self) -> Vec<Outcome> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().unwrap();
        }
        let log = self.log.lock().unwrap().clone();
        log
    }
}

fn failures(log: &[Outcome], from_ms: u64, to_ms: u64) -> Vec<&Outcome> {
    log.iter()
        .filter(|(ms, st, _, _)| *ms >= from_ms && *ms < to_ms && *st != 200)
        .collect()
}

fn count(c: &HashMap<String, usize>, v: &str) -> usize {
    c.get(v).copied().unwrap_or(0)
}

#[test]
fn the_seeds_rollout_over_the_network_from_a_real_registry() {
    let reg = Registry::start();
    // Two versions of iris, pushed as artifacts with their model file.
    let d1 = reg.push("iris:v1", iris_rust(), &[&model()], None);
    let d2 = reg.push("iris:v2", iris_rust(), &[&model()], Some(&json!({"scoring_timeout_ms": 30000})));
    assert_ne!(d1, d2);
    let (a, b, c) = (
        Node::artifact(&reg.reference("iris", &d1)),
        Node::artifact(&reg.reference("iris", &d1)),
        Node::artifact(&reg.reference("iris", &d2)),
    );
    let mirror = Node::hostile_on(free_port());
    let v1 = |traffic: u32, default: bool| json!({"name": "v1", "traffic": traffic, "default": default, "nodes": [a.addr, b.addr]});
    let v2 = |traffic: u32, default: bool| json!({"name": "v2", "traffic": traffic, "default": default, "nodes": [c.addr]});

    // Step 1: v1 at 20% is the only version and the default: it gets everything.
    let cfg = json!({"endpoints": [endpoint("iris", json!([v1(20, true)]))]});
    let r = Router::start(&cfg, &["--tls-port", "0", "--tls-self-signed"]);
    assert_eq!(count(&r.shares("iris", 100, &[]), "v1"), 100);
    // The answer is iris's, through the router and a node.
    let (status, version, body) = r.score("iris", &[], ROW);
    assert_eq!((status, version.as_str()), (200, "v1"), "{body}");
    assert!(body.contains("probabilities"), "{body}");
    // Both nodes of v1 served.
    let nodes = &r.version_status("iris", "v1")["nodes"];
    assert!(
        nodes.as_array().unwrap().iter().all(|n| n["served"].as_u64().unwrap() > 10),
        "{nodes}"
    );

    // Step 2: add v2 at 10%: exactly 90/10 in every 100 requests.
    r.reconfigure(
        &json!({"endpoints": [endpoint("iris", json!([v1(20, true), v2(10, false)]))]}),
        "iris",
        &[("v1", 90), ("v2", 10)],
    );
    for _ in 0..2 {
        let s = r.shares("iris", 100, &[]);
        assert_eq!((count(&s, "v1"), count(&s, "v2")), (90, 10), "{s:?}");
    }
    // Step 3: v2 at 40% and the default: v1 20, v2 80.
    r.reconfigure(
        &json!({"endpoints": [endpoint("iris", json!([v1(20, false), v2(40, true)]))]}),
        "iris",
        &[("v1", 20), ("v2", 80)],
    );
    let s = r.shares("iris", 100, &[]);
    assert_eq!((count(&s, "v1"), count(&s, "v2")), (20, 80), "{s:?}");

    // Cohorts are sticky; pinning wins.
    for key in ["alice", "bob", "carol", "dave"] {
        let s = r.shares("iris", 20, &[("x-wasmscore-cohort", key)]);
        assert_eq!(s.len(), 1, "cohort {key} moved: {s:?}");
    }
    let s = r.shares("iris", 10, &[("x-wasmscore-version", "v1")]);
    assert_eq!(count(&s, "v1"), 10);

    // A mirror (the hostile module echoes; its answers never reach clients).
    let m = json!({"name": "shadow", "mirror": 50, "nodes": [mirror.addr]});
    r.reconfigure(
        &json!({"endpoints": [endpoint("iris", json!([v1(20, false), v2(40, true), m]))]}),
        "iris",
        &[("v1", 20), ("v2", 80)],
    );
    wait_for("the mirror's node", Duration::from_secs(10), || {
        r.version_status("iris", "shadow")["ready_nodes"] == 1
    });
    let s = r.shares("iris", 100, &[]);
    assert_eq!((count(&s, "v1"), count(&s, "v2"), count(&s, "shadow")), (20, 80, 0), "{s:?}");
    wait_for("50 mirrored copies", Duration::from_secs(10), || {
        r.version_status("iris", "shadow")["nodes"][0]["served"].as_u64() == Some(50)
    });

    // Key auth at the router: none is 401, the secondary key works.
    let (st, _, body) = http(&r.addr, "POST", "/api/v1/service/iris/score", &[], ROW);
    assert_eq!(st, 401, "{body}");
    let (st, _, _) = http(
        &r.addr,
        "POST",
        "/api/v1/service/iris/score",
        &[("Authorization", &format!("Bearer {KEY2}"))],
        ROW,
    );
    assert_eq!(st, 200);
    // TLS at the router, verified against its development CA.
    let info: Value = serde_json::from_slice(&std::fs::read(r.dir.path().join("data/server.json")).unwrap()).unwrap();
    let out = Command::new("curl")
        .args([
            "-sS",
            "--fail-with-body",
            "--cacert",
            info["tls_ca"].as_str().unwrap(),
            "-H",
            &format!("Authorization: Bearer {KEY}"),
            "-d",
            ROW,
        ])
        .arg(format!("{}/api/v1/service/iris/score", info["tls_url"].as_str().unwrap()))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("probabilities"));

    // A config that breaks a rule is refused with up's message; the last good one serves on.
    std::fs::write(
        &r.config,
        json!({"endpoints": [endpoint("iris", json!([v1(70, false), v2(40, true)]))]}).to_string(),
    )
    .unwrap();
    wait_for("the refusal in the log", Duration::from_secs(10), || {
        r.proc.log().contains("traffic percentages add up to 110%")
    });
    let s = r.shares("iris", 100, &[]);
    assert_eq!((count(&s, "v1"), count(&s, "v2")), (20, 80), "{s:?}");
    // And the seeds' last step: delete v1.
    r.reconfigure(
        &json!({"endpoints": [endpoint("iris", json!([v2(40, true)]))]}),
        "iris",
        &[("v2", 100)],
    );
    assert_eq!(count(&r.shares("iris", 50, &[]), "v2"), 50);
    let (st, _, body) = r.score("iris", &[("x-wasmscore-version", "v1")], ROW);
    assert_eq!(st, 404, "{body}");

    // A router that cannot start says why, with the rule.
    let bad = tempfile::tempdir().unwrap();
    let bad_cfg = bad.path().join("router.json");
    std::fs::write(
        &bad_cfg,
        json!({"endpoints": [endpoint("x", json!([{"name": "a"}, {"name": "b"}]))]}).to_string(),
    )
    .unwrap();
    let out = Command::new(bin())
        .args(["router", "--port", "0", "--config"])
        .arg(&bad_cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("exactly one default version"), "{err}");
}

#[test]
fn kill_9_and_sigterm_of_a_node_under_load() {
    let _one = one_at_a_time();
    let (pa, pb) = (free_port(), free_port());
    let mut a = Node::hostile_on(pa);
    let mut b = Node::hostile_on(pb);
    let cfg = json!({"endpoints": [endpoint("h", json!([{"name": "v1", "default": true, "nodes": [a.addr, b.addr]}]))]});
    let r = Router::start(&cfg, &[]);
    // Each request takes 20 ms in the module, so some are always in flight.
    let load = Load::start(&r.addr, "h", 4, "sleep:20");
    std::thread::sleep(Duration::from_millis(1000));
    let killed_at = load.now_ms();
    a.proc.kill9();
    std::thread::sleep(Duration::from_millis(1500));
    let after = load.now_ms();
    // SIGTERM of a node under load: it drains with nothing failed. Bring
    // `a` back first so there is somewhere to go.
    let a2 = Node::hostile_on(pa);
    wait_for("a to be re-admitted", Duration::from_secs(15), || {
        r.version_status("h", "v1")["ready_nodes"] == 2
    });
    std::thread::sleep(Duration::from_millis(500));
    let term_at = load.now_ms();
    b.proc.signal("-TERM");
    let st = b.proc.wait(Duration::from_secs(20));
    assert!(st.success(), "a drained node exits 0: {st:?}");
    std::thread::sleep(Duration::from_millis(1000));
    let end = load.now_ms();
    let log = load.stop();

    let before = failures(&log, 0, killed_at);
    assert!(before.is_empty(), "failures before the kill: {before:?}");
    // Only requests in flight on the killed node may fail (4 clients: at
    // most 4), with a clear error; none once it is ejected.
    let at_kill = failures(&log, killed_at, after);
    assert!(at_kill.len() <= 4, "{} failed at the kill: {at_kill:?}", at_kill.len());
    for (_, status, _, body) in &at_kill {
        assert!(*status == 502 && body.contains("bad_gateway"), "{status} {body}");
    }
    let late = failures(&log, killed_at + 500, term_at);
    assert!(late.is_empty(), "failures after the ejection: {late:?}");
    let drain = failures(&log, term_at, end);
    assert!(drain.is_empty(), "failures during the drain: {drain:?}");
    let served_after = log.iter().filter(|(ms, st, _, _)| *ms > term_at && *st == 200).count();
    assert!(served_after > 10, "{served_after}");
    assert!(b.proc.log().contains("drained"), "{}", b.proc.log());
    println!(
        "kill -9: {} of {} requests in the 1.5 s after it failed (in flight on the killed node); SIGTERM: 0 failed of {}",
        at_kill.len(),
        log.iter().filter(|(ms, _, _, _)| *ms >= killed_at && *ms < after).count(),
        log.iter().filter(|(ms, _, _, _)| *ms >= term_at).count()
    );
    drop(a2);
}

#[test]
fn a_version_with_no_node_gives_its_share_to_the_default_and_comes_back() {
    let (p1, p2) = (free_port(), free_port());
    let n1 = Node::hostile_on(p1);
    let mut n2 = Node::hostile_on(p2);
    let cfg = json!({"endpoints": [endpoint("h", json!([
        {"name": "v1", "traffic": 50, "default": true, "nodes": [n1.addr]},
        {"name": "v2", "traffic": 50, "nodes": [n2.addr]}]))]});
    // HTTP/1.1 to the nodes here (HTTP/2 in the other tests).
    let r = Router::start(&cfg, &["--node-http1"]);
    let s = r.shares("h", 100, &[]);
    assert_eq!((count(&s, "v1"), count(&s, "v2")), (50, 50));
    n2.proc.kill9();
    r.wait_shares("h", &[("v1", 100)]);
    assert_eq!(count(&r.shares("h", 100, &[]), "v1"), 100);
    // Pinned to v2: 503 with the reason.
    let (st, _, body) = r.score("h", &[("x-wasmscore-version", "v2")], "x");
    assert_eq!(st, 503, "{body}");
    assert!(body.contains("no ready node") && body.contains(&n2.addr), "{body}");
    let auth = format!("Bearer {}", r.admin_token());
    let (st, _, body) = http(&r.addr, "GET", "/v2/models/h/versions/v2/ready", &[("Authorization", &auth)], "");
    assert_eq!(st, 503, "{body}");
    assert!(body.contains(&n2.addr), "the admin sees the reason: {body}");
    // Without a credential: not ready, and no node's address.
    let (st, _, body) = http(&r.addr, "GET", "/v2/models/h/versions/v2/ready", &[], "");
    assert!(st == 503 && !body.contains(&n2.addr), "{body}");
    assert_eq!(http(&r.addr, "GET", "/v2/models/h/ready", &[], "").0, 200);
    // Triton's repository index lists v2 UNAVAILABLE with the reason; the
    // ready ones alone, v1.
    let listed = |body: &str| -> Vec<(String, String, String)> {
        let index: Value = serde_json::from_str(body).unwrap();
        let text = |m: &Value, k: &str| m[k].as_str().unwrap_or_default().to_string();
        index
            .as_array()
            .unwrap()
            .iter()
            .map(|m| (text(m, "version"), text(m, "state"), text(m, "reason")))
            .collect()
    };
    let (st, _, body) = http(&r.addr, "POST", "/v2/repository/index", &[("Authorization", &auth)], "");
    assert_eq!(st, 200, "{body}");
    let index = listed(&body);
    assert_eq!(
        index.iter().map(|(v, s, _)| (v.as_str(), s.as_str())).collect::<Vec<_>>(),
        [("v1", "READY"), ("v2", "UNAVAILABLE")]
    );
    assert!(index[1].2.contains(&n2.addr) && index[0].2.is_empty(), "{body}");
    let (st, _, body) = http(
        &r.addr,
        "POST",
        "/v2/repository/index",
        &[("Authorization", &auth)],
        r#"{"ready": true}"#,
    );
    assert_eq!((st, listed(&body).len(), listed(&body)[0].0.as_str()), (200, 1, "v1"), "{body}");
    // A node is back: so is v2's share.
    let _n2 = Node::hostile_on(p2);
    r.wait_shares("h", &[("v1", 50), ("v2", 50)]);
    let s = r.shares("h", 100, &[]);
    assert_eq!((count(&s, "v1"), count(&s, "v2")), (50, 50));
    drop(n1);
}

/// A router sends a version's requests only to nodes that serve it. Two
/// named nodes whose addresses router.json lists under both versions get
/// only their own version's requests; a node serving another artifact
/// than router.json names is not ready, with both digests in the reason,
/// until router.json and the node agree again.
#[test]
fn a_node_that_serves_another_version_or_artifact_gets_none_of_its_requests() {
    let reg = Registry::start();
    let d1 = reg.push("iris:v1", iris_rust(), &[&model()], None);
    let d2 = reg.push("iris:v2", iris_rust(), &[&model()], Some(&json!({"scoring_timeout_ms": 30000})));
    let named = |digest: &str, version: &str| {
        let reference = reg.reference("iris", digest);
        let n = Node::spawn(
            &["--artifact", &reference, "--insecure", "--endpoint", "iris", "--version", version],
            free_port(),
        );
        n.wait_ready();
        n
    };
    let (a, b) = (named(&d1, "v1"), named(&d2, "v2"));
    let version = |name: &str, nodes: [&str; 2], artifact: &str| json!({"name": name, "traffic": 50, "default": name == "v1", "nodes": nodes, "artifact": artifact});
    let swapped = json!({"endpoints": [endpoint("iris", json!([
        version("v1", [&a.addr, &b.addr], &d1),
        version("v2", [&b.addr, &a.addr], &reg.reference("iris", &d2))]))]});
    let r = Router::start(&swapped, &[]);
    // Each version's nodes as the router sees them: (addr, ready, reason).
    let nodes = |v: &str| -> Vec<(String, bool, String)> {
        let st = r.version_status("iris", v);
        st["nodes"]
            .as_array()
            .unwrap_or(&Vec::new())
            .iter()
            .map(|n| {
                let text = |k: &str| n[k].as_str().unwrap_or_default().to_string();
                (text("addr"), n["ready"] == true, text("reason"))
            })
            .collect()
    };
    wait_for("each version's own node ready", Duration::from_secs(10), || {
        let ready = |v: &str| nodes(v).into_iter().filter(|n| n.1).map(|n| n.0).collect::<Vec<_>>();
        ready("v1") == [a.addr.clone()] && ready("v2") == [b.addr.clone()]
    });
    let (v1, v2) = (nodes("v1"), nodes("v2"));
    assert!(
        v1[1].2.contains("it serves iris/v2, and this router routes iris/v1 to it"),
        "{v1:?}"
    );
    assert!(
        v2[1].2.contains("it serves iris/v1, and this router routes iris/v2 to it"),
        "{v2:?}"
    );
    // Every request reaches a node of the version it was routed to.
    let s = r.shares("iris", 100, &[]);
    assert_eq!((count(&s, "v1"), count(&s, "v2")), (50, 50), "{s:?}");
    let served = |v: &str| -> Vec<u64> {
        r.version_status("iris", v)["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["served"].as_u64().unwrap())
            .collect()
    };
    assert_eq!((served("v1")[1], served("v2")[1]), (0, 0));
    assert!(served("v1")[0] >= 50 && served("v2")[0] >= 50);
    // A named node itself refuses another version's request unstarted (as
    // a draining node does, so a router tries another node).
    let (st, head, body) = http(
        &a.addr,
        "POST",
        "/internal/v1/score",
        &[
            ("x-wasmscore-endpoint", "iris"),
            ("x-wasmscore-version", "v2"),
            ("content-type", "application/json"),
        ],
        ROW,
    );
    assert_eq!((st, header(&head, "x-wasmscore-outcome").as_str()), (503, "draining"), "{body}");
    assert!(body.contains("it serves iris/v1, and this router routes iris/v2 to it"), "{body}");

    // v1 is said to be d2 now: its node serves d1, so v1 has no ready node.
    let one = |artifact: &str| json!({"endpoints": [endpoint("iris", json!([{"name": "v1", "default": true, "nodes": [a.addr], "artifact": artifact}]))]});
    r.rewrite(&one(&d2));
    let mut body = String::new();
    wait_for("v1's node not ready", Duration::from_secs(10), || {
        let (st, _, b) = r.score("iris", &[], ROW);
        body = b;
        st == 503
    });
    assert!(
        body.contains(&format!(
            "it serves artifact {d1}, and this router routes iris/v1's artifact {d2} to it"
        )),
        "{body}"
    );
    // router.json agrees with the node again: it serves.
    r.reconfigure(&one(&d1), "iris", &[("v1", 100)]);
    let (st, version, body) = r.score("iris", &[], ROW);
    assert_eq!((st, version.as_str()), (200, "v1"), "{body}");
}

/// The Open Inference Protocol through the router: REST (JSON and binary)
/// and gRPC requests reach a node's module with their tensors decoded, and
/// the tensors it answers come back across the hop, as tritonclient reads
/// them; a version pushed as a model alone (the built-in module) serves
/// the same pinned.
#[test]
fn open_inference_protocol_crosses_the_router_to_a_node() {
    let node = Node::spawn(
        &["--module", iris_rust().to_str().unwrap(), "--model", model().to_str().unwrap()],
        free_port(),
    );
    node.wait_ready();
    // v2: the model alone, pushed with no module (the built-in one serves it).
    let registry = Registry::start();
    let out = Command::new(bin())
        .args([
            "push",
            "--insecure",
            "--json",
            "--registry",
            &format!("{}/iris:model-only", registry.addr),
            "--model",
        ])
        .arg(model())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let digest = serde_json::from_slice::<Value>(&out.stdout).unwrap()["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let model_only = Node::artifact(&registry.reference("iris", &digest));
    let grpc = free_port();
    let cfg = json!({"endpoints": [endpoint("iris", json!([
        {"name": "v1", "traffic": 100, "default": true, "nodes": [node.addr]},
        {"name": "v2", "traffic": 0, "nodes": [model_only.addr]}]))]});
    let r = Router::start(&cfg, &["--grpc-port", &grpc.to_string()]);
    // Metadata: the router asks no node; the nodes told it their model's
    // inputs and outputs in their ready answers.
    for path in ["/v2/models/iris", "/v2/models/iris/versions/v2"] {
        let (st, _, b) = http(&r.addr, "GET", path, &[], "");
        let m: Value = serde_json::from_str(&b).unwrap();
        assert_eq!(
            (st, &m["inputs"][0]["name"], &m["inputs"][0]["shape"]),
            (200, &json!("X"), &json!([-1, 4])),
            "{b}"
        );
        assert_eq!(m["outputs"][1]["name"], "probabilities", "{b}");
    }
    let script = "import sys, numpy as np, onnxruntime as ort, tritonclient.http as th, tritonclient.grpc as tg\n\
        http, grpc, key, model = sys.argv[1:5]\n\
        x = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]], np.float32)\n\
        want = ort.InferenceSession(model, providers=['CPUExecutionProvider']).run(None, {'X': x})\n\
        def same(r):\n\
        \x20   return np.allclose(r.as_numpy('probabilities'), want[1], atol=1e-6) and (r.as_numpy('label') == want[0]).all()\n\
        for binary in (True, False):\n\
        \x20   i = th.InferInput('X', [2, 4], 'FP32'); i.set_data_from_numpy(x, binary_data=binary)\n\
        \x20   r = th.InferenceServerClient(http).infer('iris', [i], headers={'Authorization': 'Bearer ' + key})\n\
        \x20   assert same(r) and r.get_response()['model_version'] == 'v1', r.get_response()\n\
        i = tg.InferInput('X', [2, 4], 'FP32'); i.set_data_from_numpy(x)\n\
        r = tg.InferenceServerClient(grpc).infer('iris', [i], headers={'authorization': 'Bearer ' + key})\n\
        assert same(r) and r.get_response().model_version == 'v1', r.get_response()\n\
        r = tg.InferenceServerClient(grpc).infer('iris', [i], model_version='v2', headers={'authorization': 'Bearer ' + key})\n\
        assert same(r) and r.get_response().model_version == 'v2', r.get_response()\n\
        i = th.InferInput('X', [2, 4], 'FP32'); i.set_data_from_numpy(x)\n\
        r = th.InferenceServerClient(http).infer('iris', [i], model_version='v2', headers={'Authorization': 'Bearer ' + key})\n\
        assert same(r) and r.get_response()['model_version'] == 'v2', r.get_response()\n\
        got = []\n\
        c = tg.InferenceServerClient(grpc)\n\
        c.start_stream(lambda result, error: got.append((result, error)), headers={'authorization': 'Bearer ' + key})\n\
        i = tg.InferInput('X', [2, 4], 'FP32'); i.set_data_from_numpy(x)\n\
        for n, v in enumerate(['v2', 'v1', 'v2']): c.async_stream_infer('iris', [i], model_version=v, request_id=str(n))\n\
        c.stop_stream()\n\
        assert [e for _, e in got] == [None] * 3, got\n\
        assert [(r.get_response().id, r.get_response().model_version) for r, _ in got] == [('0', 'v2'), ('1', 'v1'), ('2', 'v2')], got\n\
        assert all(same(r) for r, _ in got)\n\
        print('served through the router')\n";
    let (grpc_addr, model_path) = (format!("127.0.0.1:{grpc}"), model());
    let args = [r.addr.as_str(), &grpc_addr, KEY, model_path.to_str().unwrap()];
    clients_python(script, &args, "served through the router", || format!("router: {}", r.proc.log()));
    // A wrong shape is the module's bad input, answered across the hop as OIP's error.
    let body = r#"{"inputs":[{"name":"X","shape":[1,3],"datatype":"FP32","data":[1,2,3]}]}"#;
    let (st, _, b) = http(
        &r.addr,
        "POST",
        "/v2/models/iris/infer",
        &[("Authorization", &format!("Bearer {KEY}"))],
        body,
    );
    assert_eq!(st, 400, "{b}");
    assert!(serde_json::from_str::<Value>(&b).unwrap()["error"].is_string(), "{b}");
    // Triton's statistics, as the router saw each version's answers: four
    // each, and v1's refusal; the queue and run times are the nodes'.
    let (st, _, b) = http(
        &r.addr,
        "GET",
        "/v2/models/iris/stats",
        &[("Authorization", &format!("Bearer {KEY}"))],
        "",
    );
    assert_eq!(st, 200, "{b}");
    let stats: Value = serde_json::from_str(&b).unwrap();
    let figures: Vec<(String, u64, u64, u64)> = stats["model_stats"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let i = &m["inference_stats"];
            let n = |v: &Value| v.as_u64().unwrap();
            (
                m["version"].as_str().unwrap().to_string(),
                n(&i["success"]["count"]),
                n(&i["fail"]["count"]),
                n(&i["queue"]["count"]),
            )
        })
        .collect();
    assert_eq!(figures, [("v1".into(), 4, 1, 0), ("v2".into(), 4, 0, 0)], "{b}");
    let (st, _, b) = http(&r.addr, "GET", "/v2/models/iris/stats", &[], "");
    assert_eq!(st, 401, "{b}");
    // Shared memory on the router's machine: the router reads the input
    // and writes the output; the node gets and gives the tensors as always.
    let script = "import sys, numpy as np, onnxruntime as ort, tritonclient.grpc as tg, tritonclient.utils.shared_memory as shm\n\
        grpc, key, admin, model = sys.argv[1:5]\n\
        x = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]], np.float32)\n\
        want = ort.InferenceSession(model, providers=['CPUExecutionProvider']).run(None, {'X': x})[1]\n\
        c = tg.InferenceServerClient(grpc)\n\
        ip = shm.create_shared_memory_region('in', '/wasmscore-router-in', x.nbytes)\n\
        op = shm.create_shared_memory_region('out', '/wasmscore-router-out', want.nbytes)\n\
        try:\n\
        \x20   shm.set_shared_memory_region(ip, [x])\n\
        \x20   c.register_system_shared_memory('in', '/wasmscore-router-in', x.nbytes, headers={'authorization': 'Bearer ' + admin})\n\
        \x20   c.register_system_shared_memory('out', '/wasmscore-router-out', want.nbytes, headers={'authorization': 'Bearer ' + admin})\n\
        \x20   i = tg.InferInput('X', [2, 4], 'FP32'); i.set_shared_memory('in', x.nbytes)\n\
        \x20   o = tg.InferRequestedOutput('probabilities'); o.set_shared_memory('out', want.nbytes)\n\
        \x20   for v in ('v1', 'v2'):\n\
        \x20       shm.set_shared_memory_region(op, [np.zeros_like(want)])\n\
        \x20       r = c.infer('iris', [i], outputs=[o], model_version=v, headers={'authorization': 'Bearer ' + key})\n\
        \x20       got = shm.get_contents_as_numpy(op, np.float32, want.shape)\n\
        \x20       assert np.allclose(got, want, atol=1e-6) and r.get_response().model_version == v, (v, got)\n\
        finally:\n\
        \x20   shm.destroy_shared_memory_region(ip); shm.destroy_shared_memory_region(op)\n\
        print('shared memory through the router')\n";
    let admin = r.admin_token();
    let args = [grpc_addr.as_str(), KEY, admin.trim(), model_path.to_str().unwrap()];
    clients_python(script, &args, "shared memory through the router", || {
        format!("router: {}", r.proc.log())
    });
}

/// A TCP proxy in front of a node that can turn into a node that answers
/// garbage, or add a delay to everything it relays.
struct Proxy {
    addr: String,
    garbage: Arc<AtomicBool>,
    delay_ms: Arc<AtomicU64>,
}

impl Proxy {
    fn start(to: &str) -> Proxy {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let garbage = Arc::new(AtomicBool::new(false));
        let delay_ms = Arc::new(AtomicU64::new(0));
        let (to, g, d) = (to.to_string(), garbage.clone(), delay_ms.clone());
        std::thread::spawn(move || {
            for c in l.incoming() {
                let Ok(mut client) = c else { return };
                if g.load(Ordering::Relaxed) {
                    let _ = client.write_all(b"HTTP/9.9 garbage garbage garbage\r\n\r\n");
                    continue;
                }
                let Ok(server) = TcpStream::connect(&to) else { continue };
                let pipe = |mut from: TcpStream, mut into: TcpStream, g: Arc<AtomicBool>, d: Arc<AtomicU64>, up: bool| {
                    std::thread::spawn(move || {
                        from.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
                        let mut buf = [0u8; 16384];
                        loop {
                            if g.load(Ordering::Relaxed) {
                                if !up {
                                    let _ = into.write_all(b"\x00\x00\x00garbage, not HTTP/2");
                                }
                                let _ = into.shutdown(std::net::Shutdown::Both);
                                return;
                            }
                            match from.read(&mut buf) {
                                Ok(0) => {
                                    let _ = into.shutdown(std::net::Shutdown::Write);
                                    return;
                                }
                                Ok(n) => {
                                    let ms = d.load(Ordering::Relaxed);
                                    if ms > 0 && up {
                                        std::thread::sleep(Duration::from_millis(ms));
                                    }
                                    if into.write_all(&buf[..n]).is_err() {
                                        return;
                                    }
                                }
                                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut => {}
                                Err(_) => return,
                            }
                        }
                    });
                };
                pipe(client.try_clone().unwrap(), server.try_clone().unwrap(), g.clone(), d.clone(), true);
                pipe(server, client, g.clone(), d.clone(), false);
            }
        });
        Proxy { addr, garbage, delay_ms }
    }
}

#[test]
fn a_node_that_answers_garbage_or_hangs_is_ejected_and_a_slow_one_gets_less() {
    let _one = one_at_a_time();
    let good = Node::hostile_on(free_port());
    let other = Node::hostile_on(free_port());
    let proxy = Proxy::start(&other.addr);
    let cfg = json!({"endpoints": [endpoint("h", json!([{"name": "v1", "default": true, "nodes": [good.addr, proxy.addr],
        "config": {"scoring_timeout_ms": 1000}}]))]});
    let r = Router::start(&cfg, &[]);
    wait_for("both nodes ready", Duration::from_secs(10), || {
        r.version_status("h", "v1")["ready_nodes"] == 2
    });

    // A slow node (50 ms added to each request it gets) is picked less.
    proxy.delay_ms.store(50, Ordering::Relaxed);
    let load = Load::start(&r.addr, "h", 4, "hello");
    std::thread::sleep(Duration::from_millis(1500));
    assert!(load.stop().iter().all(|(_, st, _, _)| *st == 200));
    let nodes = r.version_status("h", "v1")["nodes"].clone();
    let served = |i: usize| nodes[i]["served"].as_u64().unwrap();
    println!("slow node: {} requests, fast node: {}", served(1), served(0));
    assert!(
        served(1) * 4 < served(0),
        "the slow node got {} of {}: {nodes}",
        served(1),
        served(0) + served(1)
    );
    proxy.delay_ms.store(0, Ordering::Relaxed);

    // Garbage: the requests on it get 502 with a JSON error, it is
    // ejected, and the other node serves everything after.
    proxy.garbage.store(true, Ordering::Relaxed);
    let mut codes = HashMap::new();
    for _ in 0..40 {
        let (st, _, body) = r.score("h", &[], "hello");
        if st != 200 {
            assert_eq!(st, 502, "{body}");
            let v: Value = serde_json::from_str(&body).unwrap();
            assert_eq!(v["error"]["code"], "bad_gateway", "{body}");
            assert!(v["error"]["message"].as_str().unwrap().contains(&proxy.addr), "{body}");
        }
        *codes.entry(st).or_insert(0) += 1;
    }
    assert!(codes.get(&200).copied().unwrap_or(0) >= 38, "{codes:?}");
    let node = r.version_status("h", "v1")["nodes"][1].clone();
    // Out, whether a request or a health check found it first.
    assert_eq!(node["ready"], false, "{node}");
    println!("garbage: {codes:?}; the node: {node}");

    // A node that hangs (stopped): 504 once the deadline passes, ejected,
    // the others keep serving.
    proxy.garbage.store(false, Ordering::Relaxed);
    let hung = Node::hostile_on(free_port());
    let cfg = json!({"endpoints": [endpoint("h", json!([{"name": "v1", "default": true, "nodes": [good.addr, hung.addr],
        "config": {"scoring_timeout_ms": 1000}}]))]});
    std::fs::write(&r.config, cfg.to_string()).unwrap();
    wait_for("the new node", Duration::from_secs(10), || {
        r.version_status("h", "v1")["nodes"][1]["addr"] == hung.addr.as_str() && r.version_status("h", "v1")["ready_nodes"] == 2
    });
    hung.proc.signal("-STOP");
    let started = Instant::now();
    let mut timeouts = 0;
    for _ in 0..20 {
        let (st, _, body) = r.score("h", &[], "hello");
        if st == 504 {
            assert!(body.contains("node_timeout") && body.contains(&hung.addr), "{body}");
            timeouts += 1;
        } else {
            assert_eq!(st, 200, "{body}");
        }
    }
    hung.proc.signal("-CONT");
    assert!((1..=2).contains(&timeouts), "{timeouts} timed out");
    assert!(started.elapsed() < Duration::from_secs(10));
    drop(other);
}

#[test]
fn bad_artifacts_are_refused_and_an_unreachable_registry_is_retried() {
    let reg = Registry::start();
    let digest = reg.push("iris:v1", iris_rust(), &[&model()], None);
    // A digest the registry does not have: the node refuses to start, naming it.
    let missing = format!("sha256:{}", "0".repeat(64));
    let mut n = Node::spawn(&["--artifact", &reg.reference("iris", &missing), "--insecure"], free_port());
    assert!(!n.proc.wait(Duration::from_secs(30)).success());
    assert!(n.proc.log().contains(&missing), "{}", n.proc.log());

    // An unreachable registry: the node retries with backoff and stays not
    // ready, saying why; it becomes ready once the registry is there.
    let port = free_port();
    let reference = format!("127.0.0.1:{port}/iris@{digest}");
    let waiting = Node::spawn(&["--artifact", &reference, "--insecure"], free_port());
    let deadline = Instant::now() + Duration::from_secs(30);
    while !waiting.ready().1.contains("registry unreachable") {
        let ready = waiting.ready();
        assert!(
            Instant::now() < deadline,
            "the node never said the registry was unreachable: {ready:?}\n{}",
            waiting.proc.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(waiting.ready().0, 503);
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        waiting.proc.log().matches("registry unreachable").count() >= 2,
        "{}",
        waiting.proc.log()
    );
    // The registry appears with the artifact already in it (pushing after
    // it answers would race the node's next try, which rightly takes
    // "manifest unknown" as final).
    let reg2 = Registry::serving_copy_of(&reg, port);
    waiting.wait_ready();
    let again = reg2.push("iris:v1", iris_rust(), &[&model()], None);
    assert_eq!(again, digest, "the same bytes give the same digest");

    // A corrupt layer: the node refuses to start, naming the layer's digest.
    let blobs = reg.root.path().join("storage/docker/registry/v2/blobs/sha256");
    let model_digest = {
        use std::process::Command;
        let out = Command::new("sha256sum").arg(model()).output().unwrap();
        String::from_utf8(out.stdout)
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .to_string()
    };
    let data = blobs.join(&model_digest[..2]).join(&model_digest).join("data");
    assert!(data.is_file(), "{}", data.display());
    let mut bytes = std::fs::read(&data).unwrap();
    bytes[100] ^= 0xff;
    std::fs::write(&data, bytes).unwrap();
    let mut n = Node::spawn(&["--artifact", &reg.reference("iris", &digest), "--insecure"], free_port());
    assert!(!n.proc.wait(Duration::from_secs(30)).success());
    let log = n.proc.log();
    assert!(log.contains(&format!("sha256:{model_digest}")), "{log}");
}

#[test]
fn the_router_restarted_under_load_changes_nothing_else() {
    let _one = one_at_a_time();
    let n1 = Node::hostile_on(free_port());
    let n2 = Node::hostile_on(free_port());
    let cfg = json!({"endpoints": [endpoint("h", json!([{"name": "v1", "default": true, "nodes": [n1.addr, n2.addr]}]))]});
    let mut r = Router::start(&cfg, &[]);
    let load = Load::start(&r.addr, "h", 4, "hello");
    std::thread::sleep(Duration::from_millis(700));
    let down_at = load.now_ms();
    r.proc.kill9();
    let (dir, config, port) = (
        std::mem::replace(&mut r.dir, tempfile::tempdir().unwrap()),
        r.config.clone(),
        r.port,
    );
    std::thread::sleep(Duration::from_millis(300));
    let r2 = Router::start_in(dir, config, port, &[]);
    let up_at = load.now_ms();
    std::thread::sleep(Duration::from_millis(1000));
    let log = load.stop();
    assert!(failures(&log, 0, down_at).is_empty());
    // Clients reconnect; once the router is back, nothing fails.
    let after = failures(&log, up_at + 100, u64::MAX);
    assert!(after.is_empty(), "{after:?}");
    assert!(log.iter().filter(|(ms, st, _, _)| *ms > up_at && *st == 200).count() > 20);
    let s = r2.shares("h", 20, &[]);
    assert_eq!(count(&s, "v1"), 20);
}

#[test]
fn the_router_autoscales_across_nodes_from_the_load_they_report() {
    let _one = one_at_a_time();
    let n1 = Node::hostile_on(free_port());
    let cfg = json!({"endpoints": [endpoint("h", json!([{"name": "v1", "default": true, "nodes": [n1.addr],
        "config": {"autoscale_max_replicas": 4, "autoscale_scale_down_delay_seconds": 1}}]))]});
    let r = Router::start(&cfg, &[]);
    assert_eq!(r.version_status("h", "v1")["desired_replicas"], 1);
    // 6 clients of 50 ms on one node's one instance: utilization far above
    // 70%, so the seeds' rule asks for ceil(6 / 0.7) = 9, capped at 4.
    let load = Load::start(&r.addr, "h", 6, "sleep:50");
    wait_for("4 desired nodes", Duration::from_secs(20), || {
        r.version_status("h", "v1")["desired_replicas"] == 4
    });
    let log = load.stop();
    assert!(log.iter().all(|(_, st, _, _)| *st == 200), "{:?}", failures(&log, 0, u64::MAX));
    let v = r.version_status("h", "v1");
    assert!(v["last_scale_reason"].as_str().unwrap().contains("utilization"), "{v}");
    assert!(r.proc.log().contains("desired nodes changed"), "{}", r.proc.log());
    let auth = format!("Bearer {}", r.admin_token());
    let (_, _, metrics) = http(&r.addr, "GET", "/metrics", &[("Authorization", &auth)], "");
    assert!(
        metrics.contains("wasmscore_router_version_desired_replicas{endpoint=\"h\",version=\"v1\"} 4"),
        "{metrics}"
    );
    // Idle: back to the minimum after the down delay.
    wait_for("1 desired node", Duration::from_secs(20), || {
        r.version_status("h", "v1")["desired_replicas"] == 1
    });
}

#[test]
fn token_auth_at_the_router() {
    let n = Node::hostile_on(free_port());
    let key = |kid: &str, byte: &str| json!({"kid": kid, "secret": byte.repeat(32)});
    let cfg = json!({"endpoints": [
        {"name": "t", "auth": {"mode": "token", "signing_keys": [key("old", "ab"), key("new", "cd")]},
         "versions": [{"name": "v1", "default": true, "nodes": [n.addr]}]},
        {"name": "other", "auth": {"mode": "token", "signing_keys": [key("x", "ef")]},
         "versions": [{"name": "v1", "default": true, "nodes": [n.addr]}]}]});
    // Connections on one multi-thread runtime here (on a thread each,
    // with their own node connections, in the other tests).
    let r = Router::start(&cfg, &["--threads", "0"]);
    let token = |endpoint: &str| {
        let out = Command::new(bin())
            .args(["router-token", "--endpoint", endpoint, "--config"])
            .arg(&r.config)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert!(v["refreshBy"].as_str().unwrap().ends_with('Z'), "{v}");
        v["accessToken"].as_str().unwrap().to_string()
    };
    let score = |bearer: Option<&str>| {
        let auth = bearer.map(|b| format!("Bearer {b}"));
        let h: Vec<(&str, &str)> = auth.iter().map(|a| ("Authorization", a.as_str())).collect();
        http(&r.addr, "POST", "/api/v1/service/t/score", &h, "hello")
    };
    let t = token("t");
    let (st, head, body) = score(Some(&t));
    assert_eq!((st, header(&head, "x-wasmscore-version").as_str()), (200, "v1"), "{body}");
    let (st, _, body) = score(None);
    assert!(st == 401 && body.contains("Bearer <token>"), "{st} {body}");
    // Another endpoint's token, and a key with a wrong secret: refused.
    let (st, _, _) = score(Some(&token("other")));
    assert_eq!(st, 401);
    let (st, _, _) = score(Some(KEY));
    assert_eq!(st, 401);
    // A key endpoint has no tokens to give.
    let keyed = json!({"endpoints": [endpoint("k", json!([{"name": "v1", "default": true, "nodes": [n.addr]}]))]});
    let f = r.dir.path().join("keyed.json");
    std::fs::write(&f, keyed.to_string()).unwrap();
    let out = Command::new(bin())
        .args(["router-token", "--endpoint", "k", "--config"])
        .arg(&f)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not use token auth"));
}

/// Runs a command; panics with its stderr if it fails.
fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_private_registry_with_tls_and_a_password() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let p = |name: &str| d.join(name).display().to_string();
    // A CA and a certificate for 127.0.0.1 it signed (openssl), a bcrypt
    // htpasswd file (Python's crypt), docker's config.json with the login.
    run(Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ])
        .args([
            "-keyout",
            &p("ca.key"),
            "-out",
            &p("ca.pem"),
            "-days",
            "2",
            "-subj",
            "/CN=wasmscore test CA",
        ]));
    run(Command::new("openssl")
        .args(["req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"])
        .args(["-keyout", &p("srv.key"), "-out", &p("srv.csr"), "-subj", "/CN=127.0.0.1"]));
    std::fs::write(
        d.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    run(Command::new("openssl")
        .args(["x509", "-req", "-in", &p("srv.csr"), "-CA", &p("ca.pem"), "-CAkey", &p("ca.key")])
        .args(["-CAcreateserial", "-out", &p("srv.pem"), "-days", "2", "-extfile", &p("ext.cnf")]));
    let py = root().join(".venv/bin/python");
    let script = "import crypt,sys,base64,json,warnings\nwarnings.simplefilter('ignore')\nopen(sys.argv[1],'w').write('ci:'+crypt.crypt('s3cret-pw',crypt.mksalt(crypt.METHOD_BLOWFISH))+'\\n')\nopen(sys.argv[2],'w').write(json.dumps({'auths':{sys.argv[3]:{'auth':base64.b64encode(b'ci:s3cret-pw').decode()}}}))";
    let port = free_port();
    let registry = format!("127.0.0.1:{port}");
    std::fs::create_dir_all(d.join("docker")).unwrap();
    run(Command::new(&py).args(["-c", script, &p("htpasswd"), &p("docker/config.json"), &registry]));
    let _reg = docker_registry(
        d,
        &d.join("storage"),
        &registry,
        &format!(
            "  tls:\n    certificate: {}\n    key: {}\nauth:\n  htpasswd:\n    realm: wasmscore-test\n    path: {}\n",
            p("srv.pem"),
            p("srv.key"),
            p("htpasswd")
        ),
    );
    wait_for("the TLS registry", Duration::from_secs(20), || {
        let out = Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--cacert", &p("ca.pem")])
            .arg(format!("https://{registry}/v2/"))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout) == "401"
    });
    let push = |docker_config: &str, ca: bool| {
        let mut cmd = Command::new(bin());
        cmd.env("DOCKER_CONFIG", docker_config)
            .args(["push", "--json", "--registry", &format!("{registry}/iris:v1"), "--module"])
            .arg(iris_rust())
            .arg("--model")
            .arg(model());
        if ca {
            cmd.args(["--registry-ca", &p("ca.pem")]);
        }
        cmd.output().unwrap()
    };
    // Without the CA: the certificate is refused. Without the login: 401.
    let out = push(&p("docker"), false);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.to_lowercase().contains("certificate"), "{err}");
    let out = push(&p("nowhere"), true);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("401") || err.to_lowercase().contains("unauthorized") || err.to_lowercase().contains("authentication"),
        "{err}"
    );
    // With both, through TLS verified against the CA, logged in.
    let out = push(&p("docker"), true);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let digest = serde_json::from_slice::<Value>(&out.stdout).unwrap()["digest"]
        .as_str()
        .unwrap()
        .to_string();
    // A node pulls with the same login and CA.
    let reference = format!("{registry}/iris@{digest}");
    let node = Node::spawn_with(
        &["--artifact", &reference, "--registry-ca", &p("ca.pem")],
        free_port(),
        &[("DOCKER_CONFIG", &p("docker"))],
    );
    node.wait_ready();
}

/// A registry behind a token service, as Docker Hub, GHCR, ACR and Harbor
/// run theirs: Debian's docker-registry with `auth: token`, and
/// tests/registry/token_server.py handing out JWTs it signs (RS256, the
/// key's certificate in `x5c`, which the registry checks against its
/// `rootcertbundle`).
#[test]
fn a_registry_behind_a_token_service() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let p = |name: &str| d.join(name).display().to_string();
    run(Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2"])
        .args([
            "-keyout",
            &p("token.key"),
            "-out",
            &p("token.pem"),
            "-subj",
            "/CN=wasmscore test token issuer",
        ]));
    std::fs::write(
        d.join("users.json"),
        json!({
            "ci": {"password": "s3cret-pw", "actions": ["pull", "push"], "refresh_token": "refresh-for-ci"},
            "reader": {"password": "read-only", "actions": ["pull"]},
            "node": {"actions": ["pull"], "refresh_token": "refresh-for-the-node"},
        })
        .to_string(),
    )
    .unwrap();
    let tport = free_port();
    let _tokens = Proc::spawn(
        Command::new(root().join(".venv/bin/python"))
            .arg(root().join("tests/registry/token_server.py"))
            .arg(tport.to_string())
            .args([p("users.json"), p("token.key"), p("token.pem")])
            .args(["wasmscore-test-issuer", "wasmscore-test-registry"]),
        d.join("tokens.log"),
    );
    let registry = format!("127.0.0.1:{}", free_port());
    let _reg = docker_registry(
        d,
        &d.join("storage"),
        &registry,
        &format!(
            "auth:\n  token:\n    realm: http://127.0.0.1:{tport}/token\n    service: wasmscore-test-registry\n    issuer: wasmscore-test-issuer\n    rootcertbundle: {}\n",
            p("token.pem")
        ),
    );
    wait_for("the registry and its token service", Duration::from_secs(20), || {
        let code = |url: String| {
            let out = Command::new("curl")
                .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", &url])
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        code(format!("http://{registry}/v2/")) == "401"
            && code(format!("http://127.0.0.1:{tport}/token?service=wasmscore-test-registry")) == "200"
    });
    // docker's config as `docker login` writes it: one user per folder.
    let login = |name: &str, user: &str, password: &str| {
        let auth = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, format!("{user}:{password}"));
        std::fs::create_dir_all(d.join(name)).unwrap();
        std::fs::write(
            d.join(name).join("config.json"),
            json!({"auths": {registry.clone(): {"auth": auth}}}).to_string(),
        )
        .unwrap();
        p(name)
    };
    let push = |docker_config: &str, tag: &str| {
        Command::new(bin())
            .env("DOCKER_CONFIG", docker_config)
            .args([
                "push",
                "--json",
                "--insecure",
                "--registry",
                &format!("{registry}/iris:{tag}"),
                "--module",
            ])
            .arg(iris_rust())
            .arg("--model")
            .arg(model())
            .output()
            .unwrap()
    };
    let refused = |out: std::process::Output, says: &str| {
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{err}");
        err.into_owned()
    };
    // A wrong password: the token service's own answer, not the registry's bare 401.
    let err = refused(push(&login("wrong", "ci", "not-it"), "v1"), "the token service of 127.0.0.1");
    assert!(err.contains("wrong username or password"), "{err}");
    // A login that may pull only, and none at all.
    refused(
        push(&login("reader", "reader", "read-only"), "v1"),
        "user \"reader\" may not push to iris",
    );
    refused(push(&p("nowhere"), "v1"), "has no login for 127.0.0.1");
    // The login that may push.
    let out = push(&login("ci", "ci", "s3cret-pw"), "v1");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let digest = serde_json::from_slice::<Value>(&out.stdout).unwrap()["digest"]
        .as_str()
        .unwrap()
        .to_string();
    // A node pulls through a credential helper (docker's credsStore) that
    // answers an identity token, traded at the token service by OAuth2.
    std::fs::create_dir_all(d.join("helper-bin")).unwrap();
    let helper = d.join("helper-bin/docker-credential-wasmscore-test");
    std::fs::write(
        &helper,
        format!(
            "#!/bin/sh\n[ \"$1\" = get ] || exit 1\nread server\n[ \"$server\" = {registry} ] || {{ echo 'credentials not found in native keychain'; exit 1; }}\necho '{{\"ServerURL\": \"{registry}\", \"Username\": \"<token>\", \"Secret\": \"refresh-for-the-node\"}}'\n"
        ),
    )
    .unwrap();
    run(Command::new("chmod").arg("+x").arg(&helper));
    std::fs::create_dir_all(d.join("store")).unwrap();
    std::fs::write(d.join("store/config.json"), json!({"credsStore": "wasmscore-test"}).to_string()).unwrap();
    let path = format!("{}:{}", p("helper-bin"), std::env::var("PATH").unwrap_or_default());
    let reference = format!("{registry}/iris@{digest}");
    // A node with a password while the token service is down (503 to its
    // next three requests) retries, as for an unreachable registry, and
    // serves once the service is back.
    std::fs::write(d.join("unavailable"), "3").unwrap();
    let patient = Node::spawn_with(
        &["--insecure", "--artifact", &reference],
        free_port(),
        &[("DOCKER_CONFIG", &login("patient", "reader", "read-only"))],
    );
    patient.wait_ready();
    assert_eq!(std::fs::read_to_string(d.join("unavailable")).unwrap(), "0");
    let log = patient.proc.log();
    assert!(
        log.contains("registry unreachable") && log.contains("answered 503") && log.contains("the token service is down"),
        "{log}"
    );
    let node = Node::spawn_with(
        &["--insecure", "--artifact", &reference],
        free_port(),
        &[("DOCKER_CONFIG", &p("store")), ("PATH", &path)],
    );
    node.wait_ready();
    let grants = std::fs::read_to_string(d.join("grants.log")).unwrap();
    assert!(
        grants.contains(r#"{"user": "node", "access": [{"type": "repository", "name": "iris", "actions": ["pull"]}]}"#),
        "{grants}"
    );
    // An access token that has run out by the time it is sent (as one
    // granted at the start of a pull that outlasts it): the registry
    // refuses it, and the node trades the identity token again.
    std::fs::write(d.join("expired"), "1").unwrap();
    let renewing = Node::spawn_with(
        &["--insecure", "--artifact", &reference],
        free_port(),
        &[("DOCKER_CONFIG", &p("store")), ("PATH", &path)],
    );
    renewing.wait_ready();
    assert_eq!(std::fs::read_to_string(d.join("expired")).unwrap(), "0");
    let log = renewing.proc.log();
    assert!(
        log.contains("trading it again") && log.contains("pulled; every digest checked"),
        "{log}"
    );
    let grants = std::fs::read_to_string(d.join("grants.log")).unwrap();
    let node_grants: Vec<&str> = grants.lines().filter(|l| l.contains(r#""user": "node""#)).collect();
    assert!(
        node_grants.len() >= 3 && node_grants[node_grants.len() - 2].contains(r#""expired": true"#),
        "{grants}"
    );
    assert!(!node_grants[node_grants.len() - 1].contains("expired"), "{grants}");
    // A push with an identity token, whose first access token has run out.
    std::fs::create_dir_all(d.join("ci-identity")).unwrap();
    std::fs::write(
        d.join("ci-identity/config.json"),
        json!({"auths": {registry.clone(): {"auth": "", "identitytoken": "refresh-for-ci"}}}).to_string(),
    )
    .unwrap();
    std::fs::write(d.join("expired"), "1").unwrap();
    let out = push(&p("ci-identity"), "v1-again");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::read_to_string(d.join("expired")).unwrap(), "0");
    let again = serde_json::from_slice::<Value>(&out.stdout).unwrap()["digest"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(again, digest, "the same files give the same manifest");
    let grants = std::fs::read_to_string(d.join("grants.log")).unwrap();
    let last_two: Vec<&str> = grants.lines().rev().take(2).collect();
    assert!(
        last_two[0].contains(r#""user": "ci""#) && !last_two[0].contains("expired") && last_two[1].contains(r#""expired": true"#),
        "traded again after the refusal: {grants}"
    );
    // The same helper's identity token may not push: the token service
    // grants the node's login pull only.
    let out = Command::new(bin())
        .env("DOCKER_CONFIG", p("store"))
        .env("PATH", &path)
        .args([
            "push",
            "--json",
            "--insecure",
            "--registry",
            &format!("{registry}/iris:v2"),
            "--module",
        ])
        .arg(iris_rust())
        .arg("--model")
        .arg(model())
        .output()
        .unwrap();
    refused(out, "the identity token may not push to iris");
    // A node whose identity token the service does not know stops with its
    // answer, rather than retrying as it would an unreachable registry.
    std::fs::create_dir_all(d.join("stale")).unwrap();
    std::fs::write(
        d.join("stale/config.json"),
        json!({"auths": {registry.clone(): {"auth": "", "identitytoken": "revoked"}}}).to_string(),
    )
    .unwrap();
    let mut cmd = Command::new(bin());
    cmd.env("DOCKER_CONFIG", p("stale"))
        .args(["node", "--insecure", "--artifact", &format!("{registry}/iris@{digest}")])
        .args(["--port", &free_port().to_string(), "--data-dir"])
        .arg(d.join("stale-node"));
    let mut stale = Proc::spawn(&mut cmd, d.join("stale-node.log"));
    assert!(!stale.wait(Duration::from_secs(30)).success());
    let log = stale.log();
    assert!(log.contains("refused the identity token") && log.contains("invalid_grant"), "{log}");
}

#[test]
fn a_requests_trace_crosses_the_router_to_the_nodes_log() {
    let n = Node::hostile_on(free_port());
    let r = Router::in_front_of(&n, &[]);
    let given = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let auth = format!("Bearer {KEY}");
    let (st, head, body) = http(
        &r.addr,
        "POST",
        "/api/v1/service/t/score",
        &[("Authorization", &auth), ("traceparent", given)],
        "log",
    );
    assert_eq!(st, 200, "{body}");
    let answered = header(&head, "traceparent");
    assert!(
        answered.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-") && !answered.contains("00f067aa0ba902b7"),
        "{answered}"
    );
    // The node ran it in the same trace: its module's line carries the id.
    wait_for("the node's log line", Duration::from_secs(20), || {
        n.proc
            .log()
            .lines()
            .any(|l| l.contains("hostile says hello") && l.contains("4bf92f3577b34da6a3ce929d0e0e4736"))
    });
}

/// A node's log level changes while it serves (Triton's logging extension
/// on its port): its module's info line stops with `log_info` off and comes
/// back with it on; what a level cannot say is refused.
#[test]
fn a_nodes_log_settings_change_while_it_serves() {
    let n = Node::hostile_on(free_port());
    let r = Router::in_front_of(&n, &[]);
    let auth = format!("Bearer {KEY}");
    let said = || n.proc.log().matches("hostile says hello").count();
    let score = || {
        let (st, _, body) = http(&r.addr, "POST", "/api/v1/service/t/score", &[("Authorization", &auth)], "log");
        assert_eq!(st, 200, "{body}");
    };
    let set = |body: &str| {
        let (st, _, answer) = http(&n.addr, "POST", "/v2/logging", &[], body);
        (st, serde_json::from_str::<Value>(&answer).unwrap())
    };
    score();
    wait_for("the module's line", Duration::from_secs(20), || said() == 1);
    let (st, _, now) = http(&n.addr, "GET", "/v2/logging", &[], "");
    assert_eq!(
        (st, serde_json::from_str::<Value>(&now).unwrap()["log_info"].clone()),
        (200, json!(true))
    );
    let (st, off) = set(r#"{"log_info": false}"#);
    assert_eq!(
        (st, &off["log_info"], &off["log_warning"]),
        (200, &json!(false), &json!(true)),
        "{off}"
    );
    for _ in 0..3 {
        score();
    }
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(said(), 1, "no info line with log_info off");
    let big = format!("{{\"log_file\": \"{}\"}}", "x".repeat(70_000));
    assert_eq!(http(&n.addr, "POST", "/v2/logging", &[], &big).0, 413, "an oversize body");
    let (st, refused) = set(r#"{"log_warning": false, "log_info": true}"#);
    assert_eq!(st, 400, "{refused}");
    assert!(
        refused["error"].as_str().unwrap().contains("log_info on needs log_warning on"),
        "{refused}"
    );
    assert_eq!(set(r#"{"log_info": true}"#).0, 200);
    score();
    wait_for("the module's line again", Duration::from_secs(20), || said() == 2);
}

/// The router's and the node's spans go over OTLP, the node's the child of
/// the router's, and the router's trace settings choose for both: a trace
/// the router does not sample reaches the node unsampled.
#[test]
fn the_routers_trace_settings_choose_the_spans_of_router_and_node() {
    let (collector, received) = super::observe::otlp_receiver();
    let mut n = Node::hostile_with(free_port(), &[("OTEL_EXPORTER_OTLP_ENDPOINT", &collector)]);
    let mut r = Router::in_front_of(&n, &["--otlp-endpoint", &collector]);
    let auth = format!("Bearer {KEY}");
    let score = |r: &Router, traceparent: Option<&str>| {
        let mut headers = vec![("Authorization", auth.as_str())];
        headers.extend(traceparent.map(|t| ("traceparent", t)));
        let (st, head, body) = http(&r.addr, "POST", "/api/v1/service/t/score", &headers, "log");
        assert_eq!(st, 200, "{body}");
        header(&head, "traceparent")
    };
    let given = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let traced = score(&r, Some(given));
    let admin = format!("Bearer {}", r.admin_token());
    let (st, _, body) = http(
        &r.addr,
        "POST",
        "/v2/trace/setting",
        &[("Authorization", &admin)],
        r#"{"trace_rate": "2"}"#,
    );
    assert_eq!(st, 200, "{body}");
    let fresh = [score(&r, None), score(&r, None)];
    assert!(fresh[0].ends_with("-01") && fresh[1].ends_with("-00"), "{fresh:?}");
    n.proc.signal("-TERM");
    assert!(n.proc.wait(Duration::from_secs(20)).success());
    r.proc.signal("-TERM");
    assert!(r.proc.wait(Duration::from_secs(20)).success());
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    let spans: Vec<(String, String, String, String)> = super::observe::exported_spans_by_service(&received)
        .into_iter()
        .map(|(service, sp)| (service, hex(&sp.trace_id), hex(&sp.span_id), hex(&sp.parent_span_id)))
        .collect();
    let id = |tp: &str, i: usize| tp.split('-').nth(i).unwrap().to_string();
    for tp in [&traced, &fresh[0]] {
        let router = spans
            .iter()
            .find(|s| s.0 == "wasmscore-router" && s.2 == id(tp, 2))
            .unwrap_or_else(|| panic!("the router's span {tp}: {spans:?}"));
        assert_eq!(router.1, id(tp, 1));
        assert!(
            spans
                .iter()
                .any(|s| s.0 == "wasmscore-node" && s.1 == id(tp, 1) && s.3 == id(tp, 2)),
            "the node's span under the router's {tp}: {spans:?}"
        );
    }
    assert_eq!(spans.iter().find(|s| s.2 == id(&traced, 2)).unwrap().3, "00f067aa0ba902b7");
    assert_eq!(spans.len(), 4, "nothing of the unsampled trace, at either hop: {spans:?}");
}

#[test]
fn the_router_gives_the_verdict_from_the_requests_it_routed() {
    // Two identical versions on two nodes of one machine: without spinning,
    // as each process's spin gate counts only its own spin as idle, so one
    // of two co-located nodes can keep spinning while the other parks, and
    // the verdict would rightly find it faster (README, "Half there").
    let quiet = [("WASMSCORE_SPIN_US", "0")];
    let (n1, n2) = (Node::hostile_with(free_port(), &quiet), Node::hostile_with(free_port(), &quiet));
    let cfg = json!({"endpoints": [endpoint("h", json!([
        {"name": "v1", "default": true, "control": true, "nodes": [n1.addr]},
        {"name": "v2", "traffic": 50, "nodes": [n2.addr]}]))]});
    let r = Router::start(&cfg, &[]);
    let s = r.shares("h", 200, &[]);
    assert_eq!((count(&s, "v1"), count(&s, "v2")), (100, 100));
    let auth = format!("Bearer {}", r.admin_token());
    let (status, _, body) = http(
        &r.addr,
        "GET",
        "/admin/v1/endpoints/h/compare?alpha=0.01",
        &[("Authorization", &auth)],
        "",
    );
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    let c = &v["verdict"]["comparisons"][0];
    assert_eq!((c["treatment"].as_str(), &c["requests"]), (Some("v2"), &json!([100, 100])), "{v}");
    assert!(
        c["line"].as_str().unwrap().starts_with("no difference yet between v2 and control"),
        "{c}"
    );
    assert_eq!(v["verdict"]["srm"]["mismatch"], false, "{v}");
    let compare = || -> Value {
        let (status, _, body) = http(&r.addr, "GET", "/admin/v1/endpoints/h/compare", &[("Authorization", &auth)], "");
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    };
    // Pinned requests are outside the split check; a new split starts it again.
    let pinned = r.shares("h", 100, &[("x-wasmscore-version", "v2")]);
    assert_eq!(count(&pinned, "v2"), 100);
    assert_eq!(compare()["verdict"]["srm"]["observed"], json!([["v1", 100], ["v2", 100]]));
    let cfg = json!({"endpoints": [endpoint("h", json!([
        {"name": "v1", "default": true, "control": true, "nodes": [n1.addr]},
        {"name": "v2", "traffic": 30, "nodes": [n2.addr]}]))]});
    r.reconfigure(&cfg, "h", &[("v1", 70), ("v2", 30)]);
    assert_eq!(compare()["verdict"]["srm"], Value::Null);
    r.shares("h", 100, &[]);
    let v = compare();
    assert_eq!(v["verdict"]["srm"]["observed"], json!([["v1", 70], ["v2", 30]]), "{v}");
    assert_eq!(v["verdict"]["comparisons"][0]["requests"], json!([170, 230]), "{v}");
    let (status, _, _) = http(
        &r.addr,
        "GET",
        "/admin/v1/endpoints/h/compare?alpha=2",
        &[("Authorization", &auth)],
        "",
    );
    assert_eq!(status, 400);
    let (status, _, _) = http(&r.addr, "GET", "/admin/v1/endpoints/nope/compare", &[("Authorization", &auth)], "");
    assert_eq!(status, 404);
}

/// A decoupled version across a router, over both ways to reach its node
/// (HTTP/2, and `--node-http1`): a stream's message gets each response as
/// the node's module sends it, in order, then its last (flagged when the
/// client asks); unary calls are refused with 400 / INVALID_ARGUMENT,
/// saying why, by the router once a ready answer told it, and by the node.
#[test]
fn a_decoupled_version_streams_its_responses_through_the_router() {
    let m = hostile();
    let n = Node::spawn(
        &["--module", m.to_str().unwrap(), "--config", r#"{"decoupled": true}"#],
        free_port(),
    );
    n.wait_ready();
    let script = "import sys, queue, numpy as np, tritonclient.grpc as tg, tritonclient.http as th\n\
        grpc, http, key = sys.argv[1:4]\n\
        auth = {'authorization': 'Bearer ' + key}\n\
        got = queue.Queue()\n\
        c = tg.InferenceServerClient(grpc)\n\
        c.start_stream(lambda result, error: got.put((result, error)), headers=dict(auth))\n\
        def count(n, rid, final=False):\n\
        \x20   x = tg.InferInput('COUNT', [1], 'INT64'); x.set_data_from_numpy(np.array([n], np.int64))\n\
        \x20   c.async_stream_infer('t', [x], request_id=rid, enable_empty_final_response=final)\n\
        def take(k):\n\
        \x20   return [got.get(timeout=30) for _ in range(k)]\n\
        def final(r):\n\
        \x20   p = r.get_response().parameters\n\
        \x20   return p['triton_final_response'].bool_param if 'triton_final_response' in p else None\n\
        assert c.get_model_config('t', headers=dict(auth)).config.model_transaction_policy.decoupled\n\
        count(5, 'five'); a = take(5)\n\
        assert all(e is None for _, e in a), a\n\
        assert [int(r.as_numpy('INDEX')[0]) for r, _ in a] == [0, 1, 2, 3, 4], a\n\
        assert all(r.get_response().id == 'five' and r.get_response().model_version == 'v1' for r, _ in a), a\n\
        count(3, 'flagged', True); a = take(3)\n\
        assert [final(r) for r, _ in a] == [False, False, True], a\n\
        count(0, 'none', True); a = take(1)\n\
        assert final(a[0][0]) is True and not a[0][0].get_response().outputs, a\n\
        count(200, 'many'); a = take(200)\n\
        assert [int(r.as_numpy('INDEX')[0]) for r, e in a if e is None] == list(range(200)), [e for _, e in a if e][:3]\n\
        c.stop_stream()\n\
        x = tg.InferInput('COUNT', [1], 'INT64'); x.set_data_from_numpy(np.array([2], np.int64))\n\
        try:\n\
        \x20   c.infer('t', [x], headers=dict(auth)); raise SystemExit('a unary gRPC call was answered')\n\
        except tg.InferenceServerException as e:\n\
        \x20   assert e.status() == 'StatusCode.INVALID_ARGUMENT' and 'decoupled' in e.message(), (e.status(), e.message())\n\
        hx = th.InferInput('COUNT', [1], 'INT64'); hx.set_data_from_numpy(np.array([2], np.int64))\n\
        try:\n\
        \x20   th.InferenceServerClient(http).infer('t', [hx], headers=dict(auth)); raise SystemExit('a REST call was answered')\n\
        except th.InferenceServerException as e:\n\
        \x20   assert e.status() == '400' and 'decoupled' in e.message(), (e.status(), e.message())\n\
        print('streamed through the router')\n";
    // The second router is told by its config too, as the operator's are.
    for (extra, config) in [(&[][..], json!({})), (&["--node-http1"][..], json!({"decoupled": true}))] {
        let grpc = free_port().to_string();
        let mut args = vec!["--grpc-port", &grpc];
        args.extend_from_slice(extra);
        let cfg = json!({"endpoints": [endpoint("t", json!([{"name": "v1", "default": true, "nodes": [n.addr], "config": config}]))]});
        let r = Router::start(&cfg, &args);
        let grpc_addr = format!("127.0.0.1:{grpc}");
        clients_python(script, &[&grpc_addr, &r.addr, KEY], "streamed through the router", || {
            format!("{extra:?}\nrouter: {}\nnode: {}", r.proc.log(), n.proc.log())
        });
    }
    // The node refuses a unary call itself (a router that has not heard
    // it is decoupled: scaled to zero, or before its first check).
    let (st, _, body) = http(
        &n.addr,
        "POST",
        "/internal/v1/score",
        &[("x-wasmscore-endpoint", "t"), ("x-wasmscore-version", "v1")],
        "hello",
    );
    assert_eq!(st, 500, "{body}");
    assert!(body.contains("is decoupled") && body.contains("router.json"), "{body}");
}
