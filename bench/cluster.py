#!/usr/bin/env python3
"""wasmscore on a cluster in a box: how fast changes take effect.

Against tests/kube/apiserver.py (the API server simulation with its
stand-in kubelet running pods as real `wasmscore node` processes), a
Debian docker-registry, `wasmscore operator run` and one `wasmscore router
--kube`, all on loopback:

- Endpoint applied -> first request scored through the router, for the Rust
  and the Python iris, with the node pods' compile cache (a hostPath the
  operator mounts) cold and warm; split into the operator's first status
  (reconcile), the pod's process start -> ready (pull, compile, init), and
  the rest (the kubelet's probe, the EndpointSlice, the router's watch).
- Reconcile time per Endpoint change: a traffic change PUT -> the status's
  observedGeneration catching up (20 changes).
- The autoscaler's reaction: a load step (4 clients, one request at a time
  per node) -> the leader's scale write -> the second pod ready -> the
  router sending to it.

Run through bench/cluster.sh; it writes a section of BENCHMARKS.md.
"""

import argparse
import base64
import json
import statistics
import sys
import threading
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare import BIN, BODY, ROOT, Proc, free_port, machine, scratch, write_section  # noqa: E402
from network import push, registry  # noqa: E402

NS = "default"
ADMIN = "bench-admin-token-0123456789abcdef"


class Cluster:
    def __init__(self, work):
        self.work = Path(work)
        state = self.work / "sim"
        self.sim = Proc([str(ROOT / ".venv/bin/python"), str(ROOT / "tests/kube/apiserver.py"), "--state-dir", str(state),
                         "--wasmscore", str(BIN), "--crd", str(ROOT / "deploy/crd.json")], log=self.work / "apiserver.log")
        info = state / "apiserver.json"
        deadline = time.time() + 30
        while not info.is_file():
            if time.time() > deadline:
                raise RuntimeError("the API server simulation did not start: see " + str(self.work / "apiserver.log"))
            time.sleep(0.05)
        self.api = json.loads(info.read_text())["url"]
        self.env = {"KUBECONFIG": str(state / "kubeconfig"), "RUST_LOG": "info", "WASMSCORE_ADMIN_TOKEN": ADMIN, "PATH": "/usr/bin:/bin"}
        self.s = requests.Session()
        self.operator = None

    def start_operator(self, cache):
        if self.operator:
            self.operator.stop()
        self.operator = Proc([str(BIN), "operator", "run", "--namespace", NS, "--drain-seconds", "2",
                              "--compile-cache-host-path", str(cache)], env=self.env, log=self.work / "operator.log")

    def start_router(self):
        port = free_port()
        self.router_proc = Proc([str(BIN), "router", "--kube", "--namespace", NS, "--port", str(port), "--node-http1",
                                 "--identity", "bench"], env=self.env, log=self.work / "router.log")
        self.router = f"http://127.0.0.1:{port}"
        until(lambda: ok(self.s, "GET", self.router + "/v2/health/ready"), 30, "the router")
        until(lambda: self.router_status()["scaler"]["leader"], 15, "the router to lead")

    def router_status(self):
        return self.s.get(self.router + "/admin/v1/status", headers={"Authorization": f"Bearer {ADMIN}"}, timeout=5).json()

    def path(self, kind, name=""):
        base = {"endpoints": f"/apis/wasmscore.dev/v1alpha1/namespaces/{NS}/endpoints",
                "deployments": f"/apis/apps/v1/namespaces/{NS}/deployments",
                "secrets": f"/api/v1/namespaces/{NS}/secrets"}[kind]
        return self.api + base + (f"/{name}" if name else "")

    def get(self, kind, name):
        r = self.s.get(self.path(kind, name), timeout=5)
        return r.json() if r.status_code == 200 else None

    def key(self, endpoint):
        sec = self.get("secrets", f"{endpoint}-keys")
        if not sec:
            return None
        if "data" in sec and "primaryKey" in sec["data"]:
            return base64.b64decode(sec["data"]["primaryKey"]).decode()
        return sec.get("stringData", {}).get("primaryKey")

    def pods(self, deployment):
        return [p for p in self.s.get(self.api + "/sim/pods", timeout=5).json() if p["deployment"] == deployment]

    def score(self, endpoint, key):
        try:
            r = self.s.post(f"{self.router}/api/v1/service/{endpoint}/score", data=BODY,
                            headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"}, timeout=10)
            return r.status_code
        except requests.RequestException:
            return 0


def ok(s, method, url):
    try:
        return s.request(method, url, timeout=2).status_code == 200
    except requests.RequestException:
        return False


def until(f, limit, what, every=0.005):
    deadline = time.perf_counter() + limit
    while True:
        v = f()
        if v:
            return v
        if time.perf_counter() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(every)


def endpoint(name, artifact, config=None):
    return {"apiVersion": "wasmscore.dev/v1alpha1", "kind": "Endpoint", "metadata": {"name": name, "namespace": NS},
            "spec": {"auth": {"mode": "key"},
                     "versions": [{"name": "v1", "artifact": artifact, "traffic": 100, "default": True, "config": config or {}}]}}


def first_request(c, name, artifact):
    """Endpoint applied -> first 200 through the router, with its parts."""
    t0 = time.perf_counter()
    r = c.s.post(c.path("endpoints"), json=endpoint(name, artifact), timeout=5)
    assert r.status_code == 201, r.text

    def reconciled():
        ep = c.get("endpoints", name)
        return ep and ep.get("status", {}).get("observedGeneration") == ep["metadata"]["generation"]

    until(reconciled, 60, "the first status")
    t_status = time.perf_counter() - t0
    key = until(lambda: c.key(name), 60, "the keys")
    until(lambda: c.score(name, key) == 200, 300, f"{name} to score", every=0.002)
    t_first = time.perf_counter() - t0
    pod = until(lambda: [p for p in c.pods(f"{name}-v1") if p.get("readyAt")], 10, "the pod's ready time")[0]
    start_to_ready = pod["readyAt"] - pod["startedAt"]
    return {"first": t_first, "status": t_status, "pod_start_to_ready": start_to_ready}


def reconcile_times(c, name, n):
    out = []
    for i in range(n):
        ep = c.get("endpoints", name)
        ep["spec"]["versions"][0]["config"] = {"scoring_timeout_ms": 30000 + i}
        t0 = time.perf_counter()
        r = c.s.put(c.path("endpoints", name), json=ep, timeout=5)
        assert r.status_code == 200, r.text
        gen = r.json()["metadata"]["generation"]
        until(lambda: (c.get("endpoints", name).get("status") or {}).get("observedGeneration") == gen, 30, "the status")
        out.append(time.perf_counter() - t0)
    return out


def autoscale_reaction(c, artifact):
    name = "step"
    # A target of 10%: iris takes ~0.1 ms, so 4 clients keep one node busy
    # only part of the time; any steady load is then above target.
    cfg = {"autoscale_min_replicas": 1, "autoscale_max_replicas": 2, "replica_max_concurrent_requests": 1,
           "autoscale_target_utilization": 10}
    r = c.s.post(c.path("endpoints"), json=endpoint(name, artifact, cfg), timeout=5)
    assert r.status_code == 201, r.text
    key = until(lambda: c.key(name), 60, "the keys")
    until(lambda: c.score(name, key) == 200, 120, "the first node")
    stop = threading.Event()

    def client():
        s = requests.Session()
        while not stop.is_set():
            try:
                s.post(f"{c.router}/api/v1/service/{name}/score", data=BODY,
                       headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"}, timeout=10)
            except requests.RequestException:
                pass

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        until(lambda: (c.get("deployments", f"{name}-v1") or {}).get("spec", {}).get("replicas") == 2, 60, "the scale write", every=0.01)
        t_scale = time.perf_counter() - t0
        until(lambda: sum(1 for p in c.pods(f"{name}-v1") if p["ready"]) == 2, 60, "the second pod", every=0.01)
        t_pod = time.perf_counter() - t0

        def both():
            v = [e for e in c.router_status()["endpoints"] if e["name"] == name][0]["versions"][0]
            return v["ready_nodes"] == 2 and all(n["served"] > 0 for n in v["nodes"])

        until(both, 30, "the router to use the second node", every=0.01)
        t_route = time.perf_counter() - t0
    finally:
        stop.set()
        for t in threads:
            t.join()
    return {"scale_write": t_scale, "second_pod_ready": t_pod, "second_node_serving": t_route}


def render(rows, reconciles, step):
    ms = lambda s: f"{s * 1000:.0f} ms"  # noqa: E731
    lines = [f"Machine: {machine()}. `bash bench/cluster.sh`; everything on loopback, the API server simulated "
             "(tests/kube/apiserver.py; probes every 0.25 s), node pods real `wasmscore node` processes.", "",
             "Endpoint applied -> first request scored through the router:", "",
             "| module | compile cache | first status (reconcile) | pod start -> ready | applied -> first 200 |",
             "| --- | --- | ---: | ---: | ---: |"]
    for (lang, cache), r in rows:
        lines.append(f"| {lang} | {cache} | {ms(r['status'])} | {ms(r['pod_start_to_ready'])} | {ms(r['first'])} |")
    q = statistics.quantiles(reconciles, n=10)
    lines += ["", f"Reconcile per Endpoint change (PUT -> status.observedGeneration, {len(reconciles)} changes): "
              f"median {ms(statistics.median(reconciles))}, p90 {ms(q[8])}, max {ms(max(reconciles))}.", "",
              "The autoscaler's reaction to a load step (4 clients, 1 request at a time per node, min 1, max 2, "
              "target 10%, refresh 1 s: a decision at most once a second): "
              f"leader's scale write {ms(step['scale_write'])}, second pod ready {ms(step['second_pod_ready'])}, "
              f"the router sending to it {ms(step['second_node_serving'])} after the step."]
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rust", required=True)
    ap.add_argument("--python", required=True)
    ap.add_argument("--write", action="store_true")
    a = ap.parse_args()
    work = scratch("wasmscore-cluster-")
    reg_proc, reg = registry(work)
    c = Cluster(work)
    try:
        arts = {lang: f"{reg}/iris@{push(reg, f'iris:{lang}', path)}" for lang, path in (("Rust", a.rust), ("Python", a.python))}
        rows = []
        cache = Path(work) / "cache"
        c.start_operator(cache)
        c.start_router()
        for lang, art in arts.items():
            for state in ("cold", "warm"):
                r = first_request(c, f"{lang.lower()}-{state}", art)
                rows.append(((lang, state), r))
                print(lang, state, {k: round(v * 1000) for k, v in r.items()}, flush=True)
        reconciles = reconcile_times(c, "rust-warm", 20)
        print("reconcile", [round(x * 1000) for x in reconciles], flush=True)
        step = autoscale_reaction(c, arts["Rust"])
        print("step", {k: round(v * 1000) for k, v in step.items()}, flush=True)
    finally:
        for p in (c.operator, getattr(c, "router_proc", None), c.sim, reg_proc):
            if p:
                p.stop()
    report = render(rows, reconciles, step)
    print(report)
    if a.write:
        write_section("cluster", "{stamp}, Kubernetes in a box (issue 14)", report)


if __name__ == "__main__":
    main()
