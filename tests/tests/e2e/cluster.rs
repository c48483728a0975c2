//! A cluster in a box: the operator, the router and the CLI, unmodified,
//! against tests/kube/apiserver.py (a Kubernetes API server simulation
//! that speaks the wire protocol, with a stand-in kubelet running each
//! Deployment's pods as real `wasmscore node` processes on 127.0.0.x and
//! publishing their EndpointSlices), a real registry, real artifacts.
//!
//! - the seeds' steps with `version ... --kube`, the split measured
//!   through the router; a version deleted under load with no failed
//!   request; a broken rule refused with a condition and nothing changed;
//!   the operator killed in the middle of a change, converging once back;
//! - two routers, one leader (the Lease); a version at zero woken by a
//!   request; a load that makes the leader scale a Deployment and the
//!   stand-in kubelet start a node; the leader killed, the other takes over.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::autoscale::one_at_a_time;
use super::network::{free_port, header, http, node_cache, wait_for, Proc, Registry, ROW};
use super::{bin, clients_python, iris_rust, model, root};

const NS: &str = "default";
const ADMIN: &str = "cluster-test-admin-token-0123456789";

struct Cluster {
    dir: tempfile::TempDir,
    _sim: Proc,
    api: String,
    registry: Registry,
    operator: Option<Proc>,
}

/// A router on the cluster: its process and address.
struct KubeRouter {
    proc: Proc,
    addr: String,
    /// Where it serves the Open Inference Protocol over gRPC.
    grpc: String,
}

impl Cluster {
    fn start() -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("sim");
        let sim = Proc::spawn(
            Command::new(root().join(".venv/bin/python"))
                .arg(root().join("tests/kube/apiserver.py"))
                .arg("--state-dir")
                .arg(&state)
                .arg("--wasmscore")
                .arg(bin())
                .arg("--crd")
                .arg(root().join("deploy/crd.json"))
                .arg("--audit-log-path")
                .arg(dir.path().join("audit.jsonl")),
            dir.path().join("apiserver.log"),
        );
        let info = state.join("apiserver.json");
        wait_for("the API server simulation", Duration::from_secs(30), || info.is_file());
        let info: Value = serde_json::from_slice(&std::fs::read(&info).unwrap()).unwrap();
        let api = format!("127.0.0.1:{}", info["port"]);
        Cluster {
            dir,
            _sim: sim,
            api,
            registry: Registry::start(),
            operator: None,
        }
    }

    fn kubeconfig(&self) -> PathBuf {
        self.dir.path().join("sim/kubeconfig")
    }

    fn command(&self) -> Command {
        let mut c = Command::new(bin());
        c.env("KUBECONFIG", self.kubeconfig()).env("RUST_LOG", "info");
        c
    }

    /// A command whose requests carry the token `who` (the simulation
    /// takes any), so the audit log tells the operator's from the
    /// routers'.
    fn command_as(&self, who: &str) -> Command {
        let config = self.dir.path().join(format!("kubeconfig-{who}"));
        let text = std::fs::read_to_string(self.kubeconfig()).unwrap();
        assert!(text.contains("token: sim"), "{text}");
        std::fs::write(&config, text.replace("token: sim", &format!("token: {who}"))).unwrap();
        let mut c = self.command();
        c.env("KUBECONFIG", config);
        c
    }

    /// Every request the operator, the routers and the CLI (as a model
    /// author) made was one their roles in deploy/ allow
    /// (tests/kube/rbac_check.py over the audit log).
    fn check_rbac(&self) {
        let out = Command::new(root().join(".venv/bin/python"))
            .arg(root().join("tests/kube/rbac_check.py"))
            .arg(self.dir.path().join("audit.jsonl"))
            .arg("operator=deploy/rbac.yaml:ClusterRole:wasmscore-operator")
            .arg("router=deploy/router.yaml:Role:wasmscore-router")
            .arg("author=deploy/author.yaml:Role:wasmscore-author")
            .current_dir(root())
            .output()
            .unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        eprintln!("{text}");
        assert!(out.status.success(), "a request deploy/'s RBAC would refuse:\n{text}");
    }

    fn start_operator(&mut self) {
        let mut c = self.command_as("operator");
        c.args([
            "operator",
            "run",
            "--namespace",
            NS,
            "--drain-seconds",
            "2",
            // Routers deployed otherwise than deploy/router.yaml: the
            // NetworkPolicy lets in pods with both labels.
            "--router-pod-label",
            "app.kubernetes.io/name=wasmscore-router",
            "--router-pod-label",
            "wasmscore.dev/role=router",
            "--compile-cache-host-path",
        ])
        .arg(node_cache());
        let n = std::fs::read_dir(self.dir.path()).unwrap().count();
        self.operator = Some(Proc::spawn(&mut c, self.dir.path().join(format!("operator-{n}.log"))));
    }

    fn router(&self, identity: &str) -> KubeRouter {
        let port = free_port();
        let mut c = self.command_as("router");
        c.args([
            "router",
            "--kube",
            "--namespace",
            NS,
            "--lease-seconds",
            "2",
            "--identity",
            identity,
            "--node-http1",
        ])
        .args(["--port", &port.to_string()]);
        // gRPC as deploy/router.yaml serves it.
        let grpc = free_port();
        c.args(["--grpc-port", &grpc.to_string()]).env("WASMSCORE_ADMIN_TOKEN", ADMIN);
        let proc = Proc::spawn(&mut c, self.dir.path().join(format!("router-{identity}.log")));
        let addr = format!("127.0.0.1:{port}");
        wait_for("the router to list the namespace", Duration::from_secs(30), || {
            http(&addr, "GET", "/v2/health/ready", &[], "").0 == 200
        });
        KubeRouter {
            proc,
            addr,
            grpc: format!("127.0.0.1:{grpc}"),
        }
    }

    /// `wasmscore ARGS --kube`: success, stdout and stderr.
    fn cli(&self, args: &[&str]) -> (bool, String) {
        let out = self
            .command_as("author")
            .args(args)
            .args(["--kube", "--namespace", NS])
            .output()
            .unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        (out.status.success(), text)
    }

    fn get(&self, path: &str) -> (u16, Value) {
        let (s, _, b) = http(&self.api, "GET", path, &[], "");
        (s, serde_json::from_str(&b).unwrap_or(Value::Null))
    }

    fn endpoint(&self, name: &str) -> Value {
        let (s, v) = self.get(&format!("/apis/wasmscore.dev/v1alpha1/namespaces/{NS}/endpoints/{name}"));
        assert_eq!(s, 200, "{v}");
        v
    }

    /// PUT the Endpoint as changed by F (what `kubectl apply` of an edited
    /// file comes to).
    fn edit_endpoint(&self, name: &str, f: impl FnOnce(&mut Value)) {
        let mut ep = self.endpoint(name);
        f(&mut ep);
        let (s, _, b) = http(
            &self.api,
            "PUT",
            &format!("/apis/wasmscore.dev/v1alpha1/namespaces/{NS}/endpoints/{name}"),
            &[("Content-Type", "application/json")],
            &ep.to_string(),
        );
        assert_eq!(s, 200, "{b}");
    }

    /// The endpoint's primary key, from the Secret the operator made.
    fn key(&self, endpoint: &str) -> String {
        let (s, secret) = self.get(&format!("/api/v1/namespaces/{NS}/secrets/{endpoint}-keys"));
        assert_eq!(s, 200, "{secret}");
        if let Some(k) = secret["stringData"]["primaryKey"].as_str() {
            return k.to_string();
        }
        use base64::Engine;
        let b = base64::engine::general_purpose::STANDARD
            .decode(secret["data"]["primaryKey"].as_str().expect("primaryKey"))
            .unwrap();
        String::from_utf8(b).unwrap()
    }

    fn deployment(&self, name: &str) -> (u16, Value) {
        self.get(&format!("/apis/apps/v1/namespaces/{NS}/deployments/{name}"))
    }

    /// The stand-in kubelet's pods of DEPLOYMENT.
    fn pods(&self, deployment: &str) -> Vec<Value> {
        let (_, v) = self.get("/sim/pods");
        v.as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|p| p["deployment"] == deployment)
            .collect()
    }

    fn condition(&self, endpoint: &str, type_: &str) -> Value {
        let ep = self.endpoint(endpoint);
        ep["status"]["conditions"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["type"] == type_).cloned())
            .unwrap_or(Value::Null)
    }

    /// Operator and kubelet logs, for a failed assertion.
    fn logs(&self) -> String {
        let mut out = String::new();
        for e in std::fs::read_dir(self.dir.path()).unwrap().flatten() {
            if e.path().extension().is_some_and(|x| x == "log") {
                let text = std::fs::read_to_string(e.path()).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(30).collect();
                out.push_str(&format!("--- {}\n", e.path().display()));
                for l in tail.into_iter().rev() {
                    out.push_str(l);
                    out.push('\n');
                }
            }
        }
        out
    }
}

/// One scoring request through the router at ADDR: status, the version
/// that answered, the body.
fn score(addr: &str, key: &str) -> (u16, String, String) {
    let auth = format!("Bearer {key}");
    let (s, head, body) = http(
        addr,
        "POST",
        "/api/v1/service/iris/score",
        &[("Authorization", &auth), ("Content-Type", "application/json")],
        ROW,
    );
    (s, header(&head, "x-wasmscore-version"), body)
}

impl KubeRouter {
    fn score(&self, key: &str) -> (u16, String, String) {
        score(&self.addr, key)
    }

    /// N requests: how many each version answered (non-200s under "!status").
    fn split(&self, key: &str, n: usize) -> HashMap<String, usize> {
        let mut out = HashMap::new();
        for _ in 0..n {
            let (s, v, _) = self.score(key);
            let k = if s == 200 { v } else { format!("!{s}") };
            *out.entry(k).or_insert(0) += 1;
        }
        out
    }

    fn status(&self) -> Value {
        let auth = format!("Bearer {ADMIN}");
        let (s, _, b) = http(&self.addr, "GET", "/admin/v1/status", &[("Authorization", &auth)], "");
        assert_eq!(s, 200, "{b}");
        serde_json::from_str(&b).unwrap()
    }

    fn is_leader(&self) -> bool {
        self.status()["scaler"]["leader"] == true
    }

    /// Waits until the router serves the split the rules give (each listed
    /// version answers at least once in 60 requests, the others never).
    fn wait_for_versions(&self, key: &str, versions: &[&str], c: &Cluster) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let got = self.split(key, 60);
            let ok = versions.iter().all(|v| got.contains_key(*v)) && got.keys().all(|k| versions.contains(&k.as_str()));
            if ok {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the router never served {versions:?}; last split {got:?}\n{}",
                c.logs()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// Scoring clients in a loop until stopped; counts what failed.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<std::sync::Mutex<Vec<String>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(addr: &str, key: &str, clients: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(std::sync::Mutex::new(Vec::new()));
        let threads = (0..clients)
            .map(|_| {
                let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
                let (addr, key) = (addr.to_string(), key.to_string());
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        let (s, v, body) = score(&addr, &key);
                        if s == 200 {
                            ok.fetch_add(1, Ordering::Relaxed);
                        } else {
                            failed.lock().unwrap().push(format!("{s} {v} {body}"));
                        }
                    }
                })
            })
            .collect();
        Load { stop, ok, failed, threads }
    }

    fn stop(self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().unwrap();
        }
        (self.ok.load(Ordering::Relaxed), self.failed.lock().unwrap().clone())
    }
}

fn in_range(got: &HashMap<String, usize>, version: &str, range: std::ops::RangeInclusive<usize>) -> bool {
    range.contains(got.get(version).unwrap_or(&0))
}

#[test]
fn the_seeds_steps_on_a_cluster_in_a_box() {
    let _one = one_at_a_time();
    let mut c = Cluster::start();
    let v1 = c
        .registry
        .reference("iris", &c.registry.push("iris:v1", iris_rust(), &[&model()], None));
    // The same module with its own config: another artifact, another digest.
    let dc = json!({"scoring_timeout_ms": 30000});
    let v2 = c
        .registry
        .reference("iris", &c.registry.push("iris:v2", iris_rust(), &[&model()], Some(&dc)));
    c.start_operator();
    let router = c.router("router-a");

    // Step 1: the first version at 20% gets everything (it is the default).
    let (ok, out) = c.cli(&[
        "version",
        "create",
        "--endpoint",
        "iris",
        "--version",
        "v1",
        "--artifact",
        &v1,
        "--traffic",
        "20",
    ]);
    assert!(ok, "{out}\n{}", c.logs());
    assert!(out.contains("v1 Healthy"), "{out}");
    let key = c.key("iris");
    router.wait_for_versions(&key, &["v1"], &c);
    let (_, dep) = c.deployment("iris-v1");
    assert!(dep["spec"]["template"]["spec"]["containers"][0]["args"].to_string().contains(&v1));
    // Its node pods take connections from the routers only.
    let (st, policy) = c.get(&format!("/apis/networking.k8s.io/v1/namespaces/{NS}/networkpolicies/iris-nodes"));
    assert_eq!(st, 200, "{policy}");
    assert_eq!(
        policy["spec"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"],
        json!({"app.kubernetes.io/name": "wasmscore-router", "wasmscore.dev/role": "router"}),
        "{policy}"
    );
    let node_pod = &c.pods("iris-v1")[0];
    let (_, pod) = c.get(&format!("/api/v1/namespaces/{NS}/pods/{}", node_pod["name"].as_str().unwrap()));
    for (k, v) in policy["spec"]["podSelector"]["matchLabels"].as_object().unwrap() {
        assert_eq!(&pod["metadata"]["labels"][k], v, "the policy does not select the node pods: {pod}");
    }

    // Step 2: a second version at 10%.
    let (ok, out) = c.cli(&[
        "version",
        "create",
        "--endpoint",
        "iris",
        "--version",
        "v2",
        "--artifact",
        &v2,
        "--traffic",
        "10",
    ]);
    assert!(ok, "{out}\n{}", c.logs());
    router.wait_for_versions(&key, &["v1", "v2"], &c);
    let got = router.split(&key, 400);
    eprintln!("step 2 split: {got:?}");
    assert!(
        in_range(&got, "v2", 20..=65) && in_range(&got, "v1", 335..=380),
        "10% to v2: {got:?}"
    );
    // tritonclient.grpc through the router's gRPC port: pinned to each
    // version, and unpinned (the split's).
    let script = "import sys, numpy as np, tritonclient.grpc as tg\n\
        grpc, key = sys.argv[1:3]\n\
        c = tg.InferenceServerClient(grpc)\n\
        x = tg.InferInput('X', [1, 4], 'FP32'); x.set_data_from_numpy(np.array([[5.1, 3.5, 1.4, 0.2]], np.float32))\n\
        h = {'authorization': 'Bearer ' + key}\n\
        for v in ('v1', 'v2'):\n\
        \x20   r = c.infer('iris', [x], model_version=v, headers=dict(h))\n\
        \x20   assert r.get_response().model_version == v and r.as_numpy('probabilities').shape == (1, 3), r.get_response()\n\
        seen = {c.infer('iris', [x], headers=dict(h)).get_response().model_version for _ in range(40)}\n\
        assert seen <= {'v1', 'v2'} and 'v1' in seen, seen\n\
        print('gRPC through the cluster router')\n";
    clients_python(script, &[&router.grpc, &key], "gRPC through the cluster router", || {
        router.proc.log()
    });

    // The API server compacts its history: every watch ends, and a watch
    // from an older resourceVersion gets 410 Gone. The operator and the
    // router relist and follow the next change.
    let (s, _, b) = http(&c.api, "POST", "/sim/compact", &[], "");
    assert_eq!(s, 200, "{b}");

    // Step 3: v2 at 40% and the default: v1 keeps its 20%, v2 takes the rest.
    let (ok, out) = c.cli(&[
        "version",
        "update",
        "--endpoint",
        "iris",
        "--version",
        "v2",
        "--traffic",
        "40",
        "--default",
    ]);
    assert!(ok, "{out}");
    let deadline = Instant::now() + Duration::from_secs(30);
    let got = loop {
        let got = router.split(&key, 400);
        if in_range(&got, "v1", 50..=115) || Instant::now() > deadline {
            break got;
        }
    };
    eprintln!("step 3 split: {got:?}");
    assert!(
        in_range(&got, "v1", 50..=115) && in_range(&got, "v2", 285..=350),
        "v1 20%, v2 80%: {got:?}"
    );

    // Step 4: delete the first version under load: nothing fails.
    let load = Load::start(&router.addr, &key, 2);
    std::thread::sleep(Duration::from_millis(500));
    let (ok, out) = c.cli(&["version", "delete", "--endpoint", "iris", "--version", "v1"]);
    assert!(ok, "{out}");
    wait_for("v1's Deployment and pods to go", Duration::from_secs(30), || {
        c.deployment("iris-v1").0 == 404 && c.pods("iris-v1").is_empty()
    });
    std::thread::sleep(Duration::from_millis(500));
    let (served, failed) = load.stop();
    eprintln!("step 4: {served} served while v1 was deleted, {} failed", failed.len());
    assert!(served > 50, "the load ran: {served}");
    assert!(
        failed.is_empty(),
        "{} of {} failed while v1 was deleted: {:?}",
        failed.len(),
        served,
        &failed[..failed.len().min(5)]
    );
    assert_eq!(router.split(&key, 30), HashMap::from([("v2".to_string(), 30)]));

    // A broken rule (no default): a condition naming it, nothing changes.
    let before = c.deployment("iris-v2").1["metadata"]["resourceVersion"].clone();
    c.edit_endpoint("iris", |ep| ep["spec"]["versions"][0]["default"] = json!(false));
    wait_for("the RuleBroken condition", Duration::from_secs(20), || {
        c.condition("iris", "Ready")["reason"] == "RuleBroken"
    });
    let ready = c.condition("iris", "Ready");
    assert!(ready["message"].as_str().unwrap().contains("default"), "{ready}");
    assert_eq!(
        c.deployment("iris-v2").1["metadata"]["resourceVersion"],
        before,
        "a refused spec writes nothing"
    );
    assert_eq!(
        router.split(&key, 20),
        HashMap::from([("v2".to_string(), 20)]),
        "the router keeps the last good spec"
    );
    // Keys are regenerated by the CLI; routers follow the Secret, even
    // while the spec is refused: a leaked key can be revoked whatever else
    // is wrong.
    let (ok, out) = c.cli(&["endpoint", "regen-key", "iris", "--key", "primary"]);
    assert!(ok, "{out}");
    let keys: Value = serde_json::from_str(&out[out.find('{').unwrap()..=out.rfind('}').unwrap()]).unwrap();
    let fresh = keys["primaryKey"].as_str().unwrap().to_string();
    assert_ne!(fresh, key);
    wait_for("the router to take the new key", Duration::from_secs(10), || {
        router.score(&key).0 == 401 && router.score(&fresh).0 == 200
    });
    let key = fresh;
    // The CLI refuses the same with local mode's message, before writing.
    let (ok, out) = c.cli(&["version", "update", "--endpoint", "iris", "--version", "v2", "--traffic", "120"]);
    assert!(!ok && out.contains("100"), "{out}");

    // The operator killed in the middle of a change: a fixed default and a
    // third version; it converges once it is back.
    c.edit_endpoint("iris", |ep| {
        ep["spec"]["versions"][0]["default"] = json!(true);
        ep["spec"]["versions"]
            .as_array_mut()
            .unwrap()
            .push(json!({"name": "v3", "artifact": v1, "traffic": 30}));
    });
    std::thread::sleep(Duration::from_millis(150));
    c.operator.as_mut().unwrap().kill9();
    c.start_operator();
    wait_for("the operator to converge after its restart", Duration::from_secs(60), || {
        let ep = c.endpoint("iris");
        ep["status"]["observedGeneration"] == ep["metadata"]["generation"]
            && ep["status"]["versions"]
                .as_array()
                .is_some_and(|v| v.iter().any(|v| v["name"] == "v3" && v["state"] == "Healthy"))
    });
    assert_eq!(c.condition("iris", "Ready")["status"], "True", "{}", c.endpoint("iris"));
    router.wait_for_versions(&key, &["v2", "v3"], &c);
    let got = router.split(&key, 400);
    eprintln!("after the operator's restart: {got:?}");
    assert!(in_range(&got, "v3", 85..=155), "30% to v3: {got:?}");

    // A version whose pods cannot start (an artifact the registry does not
    // have): Failed with the node's own words, its share to the default.
    let missing = c.registry.reference("iris", &format!("sha256:{}", "0".repeat(64)));
    let (ok, out) = c.cli(&[
        "version",
        "create",
        "--endpoint",
        "iris",
        "--version",
        "bad",
        "--artifact",
        &missing,
        "--traffic",
        "10",
    ]);
    assert!(!ok && out.contains("bad is Failed") && out.contains("CrashLoopBackOff"), "{out}");
    let got = router.split(&key, 200);
    assert!(
        !got.keys().any(|k| k.starts_with('!') || k == "bad"),
        "the default takes bad's share: {got:?}"
    );
    assert!(in_range(&got, "v3", 40..=80), "{got:?}");

    // The router's metrics: each version's request durations, with its role.
    let auth = format!("Bearer {ADMIN}");
    let (_, _, metrics) = http(&router.addr, "GET", "/metrics", &[("Authorization", &auth)], "");
    assert!(
        metrics.contains("wasmscore_request_duration_seconds_bucket{endpoint=\"iris\",version=\"v2\",role=\"default\",le=\"+Inf\"}")
            && metrics.contains("wasmscore_responses_total{endpoint=\"iris\",version=\"v3\",role=\"treatment\",code=\"2xx\"}"),
        "{metrics}"
    );
    c.check_rbac();
}

#[test]
fn two_routers_one_leader_scale_from_zero_and_under_load() {
    let _one = one_at_a_time();
    let mut c = Cluster::start();
    // At most 2 nodes, scaled to zero after 2 idle seconds, a request at a
    // time per node (so two concurrent clients need two nodes).
    let dc = json!({
        "autoscale_min_replicas": 0, "autoscale_max_replicas": 2, "autoscale_refresh_seconds": 0.5,
        "autoscale_scale_down_delay_seconds": 2, "autoscale_target_utilization": 50, "replica_max_concurrent_requests": 1
    });
    let dc_file = c.dir.path().join("dc.json");
    std::fs::write(&dc_file, dc.to_string()).unwrap();
    let art = c
        .registry
        .reference("iris", &c.registry.push("iris:auto", iris_rust(), &[&model()], None));
    c.start_operator();
    let a = c.router("router-a");
    let mut b = Some(c.router("router-b"));

    // One leader, the Lease's holder.
    wait_for("a leader", Duration::from_secs(15), || {
        a.is_leader() != b.as_ref().unwrap().is_leader()
    });
    let (_, lease) = c.get(&format!("/apis/coordination.k8s.io/v1/namespaces/{NS}/leases/wasmscore-router"));
    let holder = lease["spec"]["holderIdentity"].as_str().unwrap().to_string();
    assert_eq!(holder == "router-a", a.is_leader(), "{lease}");

    let (ok, out) = c.cli(&[
        "version",
        "create",
        "--endpoint",
        "iris",
        "--version",
        "v1",
        "--artifact",
        &art,
        "--dc",
        dc_file.to_str().unwrap(),
    ]);
    assert!(ok, "{out}\n{}", c.logs());
    let (_, dep) = c.deployment("iris-v1");
    assert!(
        dep["spec"]["replicas"] == 1,
        "the API server's default; the operator leaves it to the router: {dep}"
    );

    // Idle: the leader scales it to zero.
    wait_for("the version to scale to zero", Duration::from_secs(30), || {
        c.deployment("iris-v1").1["spec"]["replicas"] == 0 && c.pods("iris-v1").is_empty()
    });
    let key = c.key("iris");
    // The first request wakes it and waits for the node.
    let started = Instant::now();
    let (s, v, body) = b.as_ref().unwrap().score(&key);
    assert_eq!((s, v.as_str()), (200, "v1"), "{body}\n{}", c.logs());
    let woke_in = started.elapsed();
    assert_eq!(c.deployment("iris-v1").1["spec"]["replicas"], 1);

    // Load on both routers: the leader scales to two, a second node serves.
    let la = Load::start(&a.addr, &key, 2);
    let lb = Load::start(&b.as_ref().unwrap().addr, &key, 2);
    wait_for("a second node", Duration::from_secs(40), || {
        c.pods("iris-v1").iter().filter(|p| p["ready"] == true).count() == 2
    });
    wait_for("the routers to use both nodes", Duration::from_secs(10), || {
        a.status()["endpoints"][0]["versions"][0]["ready_nodes"] == 2
    });
    // The Endpoint's config reached the nodes (one request at a time each).
    let nodes = a.status()["endpoints"][0]["versions"][0]["nodes"].clone();
    assert!(
        nodes.as_array().unwrap().iter().all(|n| n["load"]["max_concurrent"] == 1),
        "{nodes}"
    );
    let (ok_a, failed_a) = la.stop();
    let (ok_b, failed_b) = lb.stop();
    assert!(failed_a.is_empty() && failed_b.is_empty(), "{failed_a:?} {failed_b:?}");
    assert!(ok_a > 0 && ok_b > 0);

    // The leader goes: the other router takes the Lease over.
    let leader_was_b = b.as_ref().unwrap().is_leader();
    if leader_was_b {
        b.take().unwrap().proc.signal("-9");
        wait_for("router-a to lead", Duration::from_secs(15), || a.is_leader());
    } else {
        drop(a);
        let b = b.as_ref().unwrap();
        wait_for("router-b to lead", Duration::from_secs(15), || b.is_leader());
    }
    eprintln!("woke from zero in {} ms", woke_in.as_millis());
    c.check_rbac();
}
