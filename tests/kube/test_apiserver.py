#!/usr/bin/env python3
"""Checks of the simulated API server (tests/kube/apiserver.py) over raw
HTTP, the way kube-rs talks to a real one.

    python tests/kube/test_apiserver.py        # exits non-zero on failure

It starts the simulator on a temporary directory with a fake `wasmscore`
(a small Python script that serves /v2/health/ready and /v2/health/live on
--listen/--port, exits with 3 when CRASH=1, fails liveness when UNHEALTHY=1), then runs every test_* function in order.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from typing import Any, Callable, Optional

import requests

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
SIM = os.path.join(HERE, "apiserver.py")
CRD = os.path.join(REPO, "deploy", "crd.json")
DIGEST = "sha256:" + "a" * 64

FAKE_NODE = """#!{python}
# A stand-in for `wasmscore node`: serves its health on --listen:--port.
import http.server, os, signal, sys
args = sys.argv[1:]
ip, port = args[args.index("--listen") + 1], int(args[args.index("--port") + 1])
print(f"fake node on {{ip}}:{{port}} args={{args}}", flush=True)
if "--data-dir" in args:
    with open(os.path.join(args[args.index("--data-dir") + 1], "touched"), "w") as f:
        f.write("yes")
if os.environ.get("CRASH") == "1":
    print("error: cannot load the artifact", flush=True)
    sys.exit(3)

class Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        ok = self.path == "/v2/health/ready" or (self.path == "/v2/health/live" and os.environ.get("UNHEALTHY") != "1")
        self.send_response(200 if ok else 404)
        self.send_header("Content-Length", "0")
        self.end_headers()
    def log_message(self, *a):
        pass

signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
http.server.HTTPServer((ip, port), Health).serve_forever()
"""


# --------------------------------------------------------------------------
# Harness
# --------------------------------------------------------------------------


class Sim:
    def __init__(self, tmp: str, name: str = "state"):
        self.dir = os.path.join(tmp, name)
        node = os.path.join(tmp, "wasmscore")
        with open(node, "w") as f:
            f.write(FAKE_NODE.format(python=sys.executable))
        os.chmod(node, 0o755)
        self.stderr = open(os.path.join(tmp, f"{name}.log"), "w")
        self.proc = subprocess.Popen(
            [sys.executable, SIM, "--state-dir", self.dir, "--wasmscore", node, "--crd", CRD,
             "--bookmark-interval", "0.5", "-v"],
            stderr=self.stderr)
        info = wait_for(lambda: self._info(), 15, "apiserver.json")
        self.url = info["url"]
        self.http = requests.Session()

    def _info(self) -> Optional[dict]:
        if self.proc.poll() is not None:
            raise AssertionError(f"the simulator exited with {self.proc.returncode}")
        try:
            with open(os.path.join(self.dir, "apiserver.json")) as f:
                return json.load(f)
        except (OSError, ValueError):
            return None

    def call(self, method: str, path: str, body: Any = None, ctype: str = "application/json",
             **params: Any) -> requests.Response:
        data = None if body is None else json.dumps(body)
        return self.http.request(method, self.url + path, data=data, params=params,
                                 headers={"Content-Type": ctype, "User-Agent": "sim-test/1"}, timeout=30)

    def ok(self, method: str, path: str, body: Any = None, ctype: str = "application/json", **params: Any) -> dict:
        r = self.call(method, path, body, ctype, **params)
        assert r.status_code in (200, 201), f"{method} {path}: {r.status_code} {r.text}"
        return r.json()

    def watch(self, path: str, **params: Any) -> list[dict]:
        """A whole watch (it ends after timeoutSeconds): its events."""
        r = requests.get(self.url + path, params=dict(params, watch="true"), timeout=30)
        assert r.status_code == 200, r.text
        assert r.headers.get("Transfer-Encoding") == "chunked"
        return [json.loads(line) for line in r.text.splitlines() if line.strip()]

    def stop(self, sig: int = signal.SIGTERM) -> int:
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=15)
        finally:
            self.stderr.close()


def wait_for(fn: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is gone for our purposes.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def cm(name: str, labels: Optional[dict] = None, **data: str) -> dict:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "labels": labels or {}},
            "data": data}


def names(items: list[dict]) -> list[str]:
    return sorted(i["metadata"]["name"] for i in items)


def deployment(name: str, replicas: Optional[int], labels: dict, container: dict, **spec: Any) -> dict:
    d = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
         "spec": {"selector": {"matchLabels": labels},
                  "template": {"metadata": {"labels": labels}, "spec": {"containers": [container]}}, **spec}}
    if replicas is not None:
        d["spec"]["replicas"] = replicas
    return d


def node_container(**extra: Any) -> dict:
    c = {"name": "node", "image": "wasmscore:dev",
         "args": ["node", "--artifact", f"127.0.0.1:5000/m@{DIGEST}", "--listen", "0.0.0.0", "--port", "8081",
                  "--data-dir", "/data"],
         "ports": [{"name": "internal", "containerPort": 8081}],
         "readinessProbe": {"httpGet": {"path": "/v2/health/ready", "port": 8081}, "periodSeconds": 1,
                            "failureThreshold": 1},
         "volumeMounts": [{"name": "data", "mountPath": "/data"}]}
    c.update(extra)
    return c


NS = "/api/v1/namespaces/default"
APPS = "/apis/apps/v1/namespaces/default"
WSE = "/apis/wasmscore.dev/v1alpha1/namespaces/default/endpoints"


# --------------------------------------------------------------------------
# API server
# --------------------------------------------------------------------------


def test_discovery_and_errors(sim: Sim) -> None:
    assert sim.ok("GET", "/version")["gitVersion"] == "v1.36.0"
    assert sim.call("GET", "/healthz").text == "ok"
    res = sim.ok("GET", "/apis/apps/v1")["resources"]
    assert {"deployments", "deployments/status", "deployments/scale"} <= {r["name"] for r in res}
    r = sim.call("GET", f"{APPS}/deployments/nope")
    assert r.status_code == 404
    assert r.json() == {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                        "message": 'deployments.apps "nope" not found', "reason": "NotFound",
                        "details": {"name": "nope", "group": "apps", "kind": "deployments"}, "code": 404}
    assert sim.call("GET", "/apis/nope/v1/things").status_code == 404
    r = sim.call("POST", "/api/v1/namespaces/missing/configmaps", cm("x"))
    assert r.status_code == 404 and r.json()["message"] == 'namespaces "missing" not found', r.text


def test_create_get_list_selectors(sim: Sim) -> None:
    a = sim.ok("POST", f"{NS}/configmaps", cm("sel-a", {"app": "x", "tier": "web"}))
    assert a["metadata"]["uid"] and a["metadata"]["creationTimestamp"].endswith("Z")
    assert a["metadata"]["resourceVersion"].isdigit()
    sim.ok("POST", f"{NS}/configmaps", cm("sel-b", {"app": "y"}))
    sim.ok("POST", f"{NS}/configmaps", cm("sel-c", {"app": "z", "tier": "db"}))
    gen = sim.ok("POST", f"{NS}/configmaps", {"metadata": {"generateName": "gen-"}})
    assert gen["metadata"]["name"].startswith("gen-") and len(gen["metadata"]["name"]) == 9
    r = sim.call("POST", f"{NS}/configmaps", cm("sel-a"))
    assert r.status_code == 409 and r.json()["reason"] == "AlreadyExists", r.text
    assert sim.ok("GET", f"{NS}/configmaps/sel-a")["metadata"]["labels"] == {"app": "x", "tier": "web"}

    def sel(**params: str) -> list[str]:
        lst = sim.ok("GET", f"{NS}/configmaps", **params)
        assert lst["kind"] == "ConfigMapList" and lst["metadata"]["resourceVersion"].isdigit()
        assert all(i["kind"] == "ConfigMap" and i["apiVersion"] == "v1" for i in lst["items"])
        return [n for n in names(lst["items"]) if n.startswith("sel-")]

    assert sel() == ["sel-a", "sel-b", "sel-c"]
    assert sel(labelSelector="app=x") == ["sel-a"]
    assert sel(labelSelector="app==y") == ["sel-b"]
    assert sel(labelSelector="app!=x") == ["sel-b", "sel-c"]
    assert sel(labelSelector="tier") == ["sel-a", "sel-c"]
    assert sel(labelSelector="!tier") == ["sel-b"]
    assert sel(labelSelector="app in (x,z)") == ["sel-a", "sel-c"]
    assert sel(labelSelector="app notin (x,z),app") == ["sel-b"]
    assert sel(labelSelector="app in (x,z),tier=db") == ["sel-c"]
    assert sel(fieldSelector="metadata.name=sel-b") == ["sel-b"]
    assert sel(fieldSelector="metadata.namespace=default,metadata.name!=sel-b") == ["sel-a", "sel-c"]
    assert sim.call("GET", f"{NS}/configmaps", fieldSelector="spec.nope=1").status_code == 400
    # All namespaces, at the non-namespaced path; kube-rs's initial LIST params are accepted.
    everywhere = sim.ok("GET", "/api/v1/configmaps", resourceVersion="0", limit="500",
                        resourceVersionMatch="NotOlderThan")
    assert {"sel-a", "sel-b", "sel-c"} <= set(names(everywhere["items"]))


def test_watch(sim: Sim) -> None:
    sim.ok("POST", f"{NS}/configmaps", cm("w-1", {"watch": "me"}))
    rv0 = sim.ok("GET", f"{NS}/configmaps")["metadata"]["resourceVersion"]

    # A live watch, with bookmarks (every 0.5 s here).
    live: list[dict] = []
    t = threading.Thread(target=lambda: live.extend(sim.watch(
        f"{NS}/configmaps", resourceVersion=rv0, timeoutSeconds="3", allowWatchBookmarks="true",
        labelSelector="watch=me")))
    t.start()
    time.sleep(0.7)
    sim.ok("POST", f"{NS}/configmaps", cm("w-2", {"watch": "me"}))
    sim.ok("PATCH", f"{NS}/configmaps/w-2", {"data": {"k": "v"}}, "application/merge-patch+json")
    sim.ok("POST", f"{NS}/configmaps", cm("w-other", {"watch": "not-me"}))
    # Stops matching the selector: a filtered watch sees it DELETED.
    sim.ok("PATCH", f"{NS}/configmaps/w-1", {"metadata": {"labels": {"watch": "no"}}}, "application/merge-patch+json")
    sim.ok("DELETE", f"{NS}/configmaps/w-2")
    t.join()
    kinds = [(e["type"], e["object"]["metadata"].get("name")) for e in live if e["type"] != "BOOKMARK"]
    assert kinds == [("ADDED", "w-2"), ("MODIFIED", "w-2"), ("DELETED", "w-1"), ("DELETED", "w-2")], kinds
    rvs = [int(e["object"]["metadata"]["resourceVersion"]) for e in live if e["type"] != "BOOKMARK"]
    assert rvs == sorted(rvs) and rvs[0] > int(rv0), rvs
    bookmarks = [e for e in live if e["type"] == "BOOKMARK"]
    assert len(bookmarks) >= 2, live
    assert bookmarks[-1]["object"]["kind"] == "ConfigMap" and bookmarks[-1]["object"]["apiVersion"] == "v1"
    assert int(bookmarks[-1]["object"]["metadata"]["resourceVersion"]) >= rvs[-1]

    # Replay from an rv: the same events from the log, in order, without bookmarks.
    replay = sim.watch(f"{NS}/configmaps", resourceVersion=rv0, timeoutSeconds="1", labelSelector="watch=me")
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in replay] == kinds

    # From rv 0 (or none): ADDED for what exists, then changes.
    initial = sim.watch(f"{NS}/configmaps", resourceVersion="0", timeoutSeconds="1",
                        fieldSelector="metadata.name=sel-a")
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in initial] == [("ADDED", "sel-a")]

    # A streaming list (sendInitialEvents): ADDED, then a bookmark that marks the end.
    streamed = sim.watch(f"{NS}/configmaps", sendInitialEvents="true", allowWatchBookmarks="true",
                         resourceVersionMatch="NotOlderThan", timeoutSeconds="1", fieldSelector="metadata.name=sel-a")
    assert streamed[0]["type"] == "ADDED" and streamed[1]["type"] == "BOOKMARK"
    assert streamed[1]["object"]["metadata"]["annotations"] == {"k8s.io/initial-events-end": "true"}


def test_compaction_gives_410(sim: Sim) -> None:
    rv = sim.ok("GET", f"{NS}/configmaps")["metadata"]["resourceVersion"]
    sim.ok("POST", f"{NS}/configmaps", cm("c-1"))
    # An open watch ends when the log is compacted.
    ended: list[float] = []
    t0 = time.monotonic()
    t = threading.Thread(target=lambda: (sim.watch(f"{NS}/configmaps", resourceVersion=rv, timeoutSeconds="20"),
                                         ended.append(time.monotonic() - t0)))
    t.start()
    time.sleep(0.5)
    sim.ok("POST", "/sim/compact")
    t.join(10)
    assert ended and ended[0] < 5, "the open watch did not end on compaction"
    events = sim.watch(f"{NS}/configmaps", resourceVersion=rv, timeoutSeconds="5")
    assert len(events) == 1 and events[0]["type"] == "ERROR", events
    status = events[0]["object"]
    assert status["code"] == 410 and status["reason"] == "Expired", status
    assert status["message"].startswith(f"too old resource version: {rv} ("), status
    # A re-list's rv watches fine.
    rv2 = sim.ok("GET", f"{NS}/configmaps")["metadata"]["resourceVersion"]
    sim.ok("POST", f"{NS}/configmaps", cm("c-2"))
    events = sim.watch(f"{NS}/configmaps", resourceVersion=rv2, timeoutSeconds="1")
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [("ADDED", "c-2")]


def test_put_conflict(sim: Sim) -> None:
    path = "/apis/coordination.k8s.io/v1/namespaces/default/leases"
    lease = sim.ok("POST", path, {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                                  "metadata": {"name": "leader"},
                                  "spec": {"holderIdentity": "a", "leaseDurationSeconds": 15}})
    lease["spec"]["holderIdentity"] = "b"
    updated = sim.ok("PUT", f"{path}/leader", lease)
    assert updated["spec"]["holderIdentity"] == "b"
    assert int(updated["metadata"]["resourceVersion"]) > int(lease["metadata"]["resourceVersion"])
    assert updated["metadata"]["uid"] == lease["metadata"]["uid"]
    lease["spec"]["holderIdentity"] = "c"  # still the old resourceVersion
    r = sim.call("PUT", f"{path}/leader", lease)
    assert r.status_code == 409, r.text
    assert r.json()["reason"] == "Conflict"
    assert r.json()["message"] == ('Operation cannot be fulfilled on leases.coordination.k8s.io "leader": the object '
                                   "has been modified; please apply your changes to the latest version and try again")
    assert sim.call("PUT", f"{path}/missing", dict(lease, metadata={"name": "missing"})).status_code == 404
    # A no-op write keeps the resourceVersion.
    same = sim.ok("PUT", f"{path}/leader", updated)
    assert same["metadata"]["resourceVersion"] == updated["metadata"]["resourceVersion"]


def test_patches(sim: Sim) -> None:
    sim.ok("POST", f"{NS}/configmaps", cm("p-1", {"a": "1"}, x="1", y="2"))
    out = sim.ok("PATCH", f"{NS}/configmaps/p-1", {"data": {"x": None, "z": "3"}}, "application/merge-patch+json")
    assert out["data"] == {"y": "2", "z": "3"}
    jp = "application/json-patch+json"
    out = sim.ok("PATCH", f"{NS}/configmaps/p-1", [
        {"op": "test", "path": "/data/y", "value": "2"},
        {"op": "replace", "path": "/data/y", "value": "two"},
        {"op": "add", "path": "/metadata/labels/a~1b", "value": "slash"},
        {"op": "copy", "from": "/data/z", "path": "/data/w"},
        {"op": "move", "from": "/data/z", "path": "/data/v"},
        {"op": "remove", "path": "/data/w"}], jp)
    assert out["data"] == {"y": "two", "v": "3"} and out["metadata"]["labels"]["a/b"] == "slash", out
    r = sim.call("PATCH", f"{NS}/configmaps/p-1", [{"op": "test", "path": "/data/y", "value": "2"},
                                                  {"op": "remove", "path": "/data/y"}], jp)
    assert r.status_code == 422 and r.json()["reason"] == "Invalid", r.text
    assert sim.ok("GET", f"{NS}/configmaps/p-1")["data"]["y"] == "two"
    # kube-rs's finalizer helper: test a missing list against null, then add.
    out = sim.ok("PATCH", f"{NS}/configmaps/p-1", [
        {"op": "test", "path": "/metadata/finalizers", "value": None},
        {"op": "add", "path": "/metadata/finalizers", "value": ["example.com/f"]}], jp)
    assert out["metadata"]["finalizers"] == ["example.com/f"]
    out = sim.ok("PATCH", f"{NS}/configmaps/p-1", [
        {"op": "test", "path": "/metadata/finalizers/0", "value": "example.com/f"},
        {"op": "remove", "path": "/metadata/finalizers/0"}], jp)
    assert "finalizers" not in out["metadata"]
    # A merge patch with a stale resourceVersion is a conflict too.
    r = sim.call("PATCH", f"{NS}/configmaps/p-1", {"metadata": {"resourceVersion": "1"}, "data": {"q": "1"}},
                 "application/merge-patch+json")
    assert r.status_code == 409, r.text
    # Strategic merge: service ports merge by port.
    svc = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "smp"},
           "spec": {"ports": [{"name": "a", "port": 80}]}}
    created = sim.ok("POST", f"{NS}/services", svc)
    assert created["spec"]["clusterIP"].startswith("10.96.") and created["spec"]["ports"][0]["targetPort"] == 80
    out = sim.ok("PATCH", f"{NS}/services/smp", {"spec": {"ports": [{"name": "b", "port": 81}]}},
                 "application/strategic-merge-patch+json")
    assert [p["port"] for p in out["spec"]["ports"]] == [80, 81], out["spec"]["ports"]
    r = sim.call("PATCH", f"{WSE}/x", {}, "application/strategic-merge-patch+json")
    assert r.status_code in (404, 415)
    # Secrets: stringData becomes data.
    sec = sim.ok("POST", f"{NS}/secrets", {"metadata": {"name": "s"}, "stringData": {"k": "v"}})
    assert sec["data"] == {"k": "dg=="} and "stringData" not in sec and sec["type"] == "Opaque"
    # The event recorder: create, then a merge patch bumping the series.
    evpath = "/apis/events.k8s.io/v1/namespaces/default/events"
    ev = {"apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": {"name": "ep.17a", "namespace": "default"},
          "eventTime": "2026-01-01T00:00:00.000000Z", "reason": "Applied", "action": "Reconcile", "type": "Normal",
          "reportingController": "wasmscore-operator", "reportingInstance": "op-1",
          "regarding": {"kind": "Endpoint", "name": "ep", "namespace": "default"}}
    sim.ok("POST", evpath, ev)
    ev["series"] = {"count": 2, "lastObservedTime": "2026-01-01T00:00:01.000000Z"}
    assert sim.ok("PATCH", f"{evpath}/ep.17a", ev, "application/merge-patch+json")["series"]["count"] == 2


def test_crd_validation(sim: Sim) -> None:
    versions = [{"name": f"v{i}", "artifact": f"r/m@{DIGEST}"} for i in range(7)]
    r = sim.call("POST", WSE, {"apiVersion": "wasmscore.dev/v1alpha1", "kind": "Endpoint",
                               "metadata": {"name": "big"}, "spec": {"versions": versions}})
    assert r.status_code == 422, r.text
    assert r.json()["message"] == ('Endpoint.wasmscore.dev "big" is invalid: spec.versions: Too many: 7: '
                                   "must have at most 6 items"), r.text
    r = sim.call("POST", WSE, {"apiVersion": "wasmscore.dev/v1alpha1", "kind": "Endpoint",
                               "metadata": {"name": "bad"}, "spec": {"versions": [{"name": "v1"}]}})
    assert r.status_code == 422 and "spec.versions[0].artifact: Required value" in r.json()["message"], r.text
    ok = sim.ok("POST", WSE, {"apiVersion": "wasmscore.dev/v1alpha1", "kind": "Endpoint",
                              "metadata": {"name": "good"}, "spec": {"versions": versions[:1], "unknown": 1}})
    assert "unknown" not in ok["spec"], "pruned"
    assert ok["spec"]["auth"] == {"mode": "key"} and ok["spec"]["versions"][0]["traffic"] == 0, "defaulted"
    assert ok["metadata"]["generation"] == 1
    # Status through /status only; spec changes bump the generation, status ones do not.
    st = sim.ok("PATCH", f"{WSE}/good/status", {"status": {"summary": "v0 100%"}}, "application/merge-patch+json")
    assert st["status"]["summary"] == "v0 100%" and st["metadata"]["generation"] == 1
    sp = sim.ok("PATCH", f"{WSE}/good", {"spec": {"auth": {"mode": "none"}}, "status": {"summary": "ignored"}},
                "application/merge-patch+json")
    assert sp["metadata"]["generation"] == 2 and sp["status"]["summary"] == "v0 100%"


def test_server_side_apply(sim: Sim) -> None:
    ap = "application/apply-patch+yaml"
    sleeper = {"name": "c", "image": "busybox:1", "command": ["sleep", "60"]}
    cfg = deployment("ssa", 0, {"app": "ssa"}, sleeper)
    cfg["metadata"]["labels"] = {"team": "a", "extra": "yes"}
    assert sim.call("PATCH", f"{APPS}/deployments/ssa", cfg, ap).status_code == 400, "fieldManager is required"
    r = sim.call("PATCH", f"{APPS}/deployments/ssa", cfg, ap, fieldManager="op", force="true")
    assert r.status_code == 201, r.text
    d = r.json()
    assert d["spec"]["progressDeadlineSeconds"] == 600 and d["spec"]["strategy"]["type"] == "RollingUpdate"
    assert d["spec"]["revisionHistoryLimit"] == 10
    mf = {(m["manager"], m["operation"]) for m in d["metadata"]["managedFields"]}
    assert ("op", "Apply") in mf, mf
    # Same config again: a no-op, same resourceVersion.
    wait_for(lambda: deployment_status(sim, "ssa").get("observedGeneration") == 1, 5, "the first status")
    current = sim.ok("GET", f"{APPS}/deployments/ssa")
    again = sim.ok("PATCH", f"{APPS}/deployments/ssa", cfg, ap, fieldManager="op", force="true")
    assert again["metadata"]["resourceVersion"] == current["metadata"]["resourceVersion"]
    # Another manager, another value, no force: a conflict naming the field.
    other = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "ssa"}, "spec": {"replicas": 2}}
    r = sim.call("PATCH", f"{APPS}/deployments/ssa", other, ap, fieldManager="router")
    assert r.status_code == 409 and r.json()["reason"] == "Conflict", r.text
    assert r.json()["message"] == 'Apply failed with 1 conflict: conflict with "op": .spec.replicas', r.text
    # The same value is no conflict (shared ownership).
    sim.ok("PATCH", f"{APPS}/deployments/ssa", dict(other, spec={"replicas": 0}), ap, fieldManager="router")
    # With force it takes the field.
    d = sim.ok("PATCH", f"{APPS}/deployments/ssa", other, ap, fieldManager="router", force="true")
    assert d["spec"]["replicas"] == 2 and d["metadata"]["generation"] == 2
    # The first manager drops replicas and a label: the label (its alone) goes,
    # replicas (the router's now) stays.
    cfg2 = deployment("ssa", None, {"app": "ssa"}, sleeper)
    cfg2["metadata"]["labels"] = {"team": "a"}
    d = sim.ok("PATCH", f"{APPS}/deployments/ssa", cfg2, ap, fieldManager="op", force="true")
    assert d["metadata"]["labels"] == {"team": "a"} and d["spec"]["replicas"] == 2, d["metadata"]
    # An Update by someone else takes ownership: the router's apply of another
    # value now conflicts with that Update manager.
    sim.ok("PATCH", f"{APPS}/deployments/ssa", {"spec": {"replicas": 1}}, "application/merge-patch+json",
           fieldManager="kubectl-edit")
    r = sim.call("PATCH", f"{APPS}/deployments/ssa", dict(other, spec={"replicas": 3}), ap, fieldManager="router")
    assert r.status_code == 409 and '"kubectl-edit" using apps/v1' in r.json()["message"], r.text
    sim.ok("PATCH", f"{APPS}/deployments/ssa", dict(other, spec={"replicas": 0}), ap, fieldManager="router",
           force="true")


def test_scale_subresource(sim: Sim) -> None:
    scale = sim.ok("GET", f"{APPS}/deployments/ssa/scale")
    assert scale["kind"] == "Scale" and scale["apiVersion"] == "autoscaling/v1"
    assert scale["spec"] == {"replicas": 0} and scale["status"]["selector"] == "app=ssa", scale
    assert isinstance(scale["status"]["replicas"], int)  # the Deployment's status.replicas (it moves: pods go)
    gen = sim.ok("GET", f"{APPS}/deployments/ssa")["metadata"]["generation"]
    out = sim.ok("PATCH", f"{APPS}/deployments/ssa/scale", {"spec": {"replicas": 2}}, "application/merge-patch+json",
                 fieldManager="router")
    assert out["kind"] == "Scale" and out["spec"]["replicas"] == 2
    d = sim.ok("GET", f"{APPS}/deployments/ssa")
    assert d["spec"]["replicas"] == 2 and d["metadata"]["generation"] == gen + 1
    entry = [m for m in d["metadata"]["managedFields"] if m["manager"] == "router" and m.get("subresource") == "scale"]
    assert entry and entry[0]["fieldsV1"] == {"f:spec": {"f:replicas": {}}}, d["metadata"]["managedFields"]
    stale = dict(scale, spec={"replicas": 1})  # the resourceVersion from before
    r = sim.call("PUT", f"{APPS}/deployments/ssa/scale", stale)
    assert r.status_code == 409, r.text
    for _ in range(10):  # read-modify-write, retried on 409 as clients do (the controllers write status)
        current = sim.ok("GET", f"{APPS}/deployments/ssa/scale")
        r = sim.call("PUT", f"{APPS}/deployments/ssa/scale", dict(current, spec={"replicas": 0}))
        if r.status_code != 409:
            break
    assert r.status_code == 200 and r.json()["spec"]["replicas"] == 0, r.text
    out = sim.ok("PATCH", f"{APPS}/deployments/ssa/scale",
                 {"apiVersion": "autoscaling/v1", "kind": "Scale", "spec": {"replicas": 0}},
                 "application/apply-patch+yaml", fieldManager="router", force="true")
    assert out["spec"]["replicas"] == 0
    sim.ok("DELETE", f"{APPS}/deployments/ssa")


def test_finalizers_and_gc(sim: Sim) -> None:
    ep = sim.ok("POST", WSE, {"apiVersion": "wasmscore.dev/v1alpha1", "kind": "Endpoint",
                              "metadata": {"name": "fin", "finalizers": ["wasmscore.dev/operator"]},
                              "spec": {"versions": [{"name": "v1", "artifact": f"r/m@{DIGEST}"}]}})
    owner = [{"apiVersion": "wasmscore.dev/v1alpha1", "kind": "Endpoint", "name": "fin",
              "uid": ep["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}]
    svc = sim.ok("POST", f"{NS}/services", {"metadata": {"name": "fin-v1", "ownerReferences": owner},
                                            "spec": {"clusterIP": "None", "selector": {"app": "nothing"},
                                                     "ports": [{"port": 8081}]}})
    assert svc["spec"]["clusterIP"] == "None"
    sim.ok("POST", f"{NS}/configmaps", dict(cm("fin-cm"), metadata={"name": "fin-cm", "ownerReferences": owner}))
    # The Service's slice (made by the endpointslice controller) is the Service's.
    slice_path = "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices/fin-v1-sim"
    wait_for(lambda: sim.call("GET", slice_path).status_code == 200, 5, "the Service's EndpointSlice")
    deleting = sim.ok("DELETE", f"{WSE}/fin")
    assert deleting["metadata"]["deletionTimestamp"], "a finalizer holds it"
    assert sim.ok("GET", f"{WSE}/fin")["metadata"]["deletionTimestamp"] == deleting["metadata"]["deletionTimestamp"]
    r = sim.call("PATCH", f"{WSE}/fin", {"metadata": {"finalizers": ["wasmscore.dev/operator", "other"]}},
                 "application/merge-patch+json")
    assert r.status_code == 422, "no new finalizers while deleting"
    assert sim.call("GET", f"{NS}/configmaps/fin-cm").status_code == 200, "dependents wait for the owner"
    sim.ok("PATCH", f"{WSE}/fin", [{"op": "test", "path": "/metadata/finalizers/0", "value": "wasmscore.dev/operator"},
                                   {"op": "remove", "path": "/metadata/finalizers/0"}], "application/json-patch+json")
    assert sim.call("GET", f"{WSE}/fin").status_code == 404
    for path in (f"{NS}/services/fin-v1", f"{NS}/configmaps/fin-cm", slice_path):
        wait_for(lambda p=path: sim.call("GET", p).status_code == 404, 5, f"{path} collected")
    # Without finalizers: gone at once; a Status for most kinds, the object for some.
    sim.ok("POST", f"{NS}/configmaps", cm("gone"))
    st = sim.ok("DELETE", f"{NS}/configmaps/gone")
    assert st["kind"] == "Status" and st["status"] == "Success" and st["details"]["name"] == "gone", st
    assert sim.call("DELETE", f"{NS}/configmaps/gone").status_code == 404


def test_status_apply_like_the_operator(sim: Sim) -> None:
    ap = "application/apply-patch+yaml"
    sim.ok("POST", WSE, {"apiVersion": "wasmscore.dev/v1alpha1", "kind": "Endpoint", "metadata": {"name": "st"},
                         "spec": {"versions": [{"name": "v1", "artifact": f"r/m@{DIGEST}"}]}})
    cond = {"type": "Ready", "status": "True", "reason": "Ok", "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"}
    patch = {"apiVersion": "wasmscore.dev/v1alpha1", "kind": "Endpoint",
             "status": {"observedGeneration": 1, "summary": "v1 100%", "url": "http://x", "conditions": [cond]}}
    out = sim.ok("PATCH", f"{WSE}/st/status", patch, ap, fieldManager="wasmscore-operator", force="true")
    assert out["status"]["summary"] == "v1 100%" and out["metadata"]["generation"] == 1
    entry = [m for m in out["metadata"]["managedFields"] if m.get("subresource") == "status"]
    assert entry and entry[0]["manager"] == "wasmscore-operator" and entry[0]["operation"] == "Apply", entry
    # Dropping a field it owned removes it; the spec is untouched.
    del patch["status"]["url"]
    out = sim.ok("PATCH", f"{WSE}/st/status", patch, ap, fieldManager="wasmscore-operator", force="true")
    assert "url" not in out["status"] and out["spec"]["versions"][0]["name"] == "v1", out
    # A status that breaks the schema is refused.
    bad = dict(patch, status={"conditions": [{"type": "Ready"}]})
    r = sim.call("PATCH", f"{WSE}/st/status", bad, ap, fieldManager="wasmscore-operator", force="true")
    assert r.status_code == 422 and "status.conditions[0].status: Required value" in r.json()["message"], r.text
    # Applying the spec does not touch the status.
    spec = {"apiVersion": "wasmscore.dev/v1alpha1", "kind": "Endpoint", "metadata": {"name": "st"},
            "spec": {"versions": [{"name": "v1", "artifact": f"r/m@{DIGEST}", "traffic": 10}]},
            "status": {"summary": "ignored"}}
    r = sim.call("PATCH", f"{WSE}/st", spec, ap, fieldManager="cli")  # the creator's (Update) list
    assert r.status_code == 409 and '"sim-test" using wasmscore.dev/v1alpha1: .spec.versions' in r.json()["message"]
    out = sim.ok("PATCH", f"{WSE}/st", spec, ap, fieldManager="cli", force="true")
    assert out["status"]["summary"] == "v1 100%" and out["metadata"]["generation"] == 2


def test_namespace_lifecycle(sim: Sim) -> None:
    sim.ok("POST", "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "tmp-ns"}})
    sim.ok("POST", "/api/v1/namespaces/tmp-ns/configmaps", cm("inside"))
    assert "tmp-ns" in names(sim.ok("GET", "/api/v1/namespaces")["items"])
    ns = sim.ok("DELETE", "/api/v1/namespaces/tmp-ns")
    assert ns["status"]["phase"] == "Terminating", ns
    r = sim.call("POST", "/api/v1/namespaces/tmp-ns/configmaps", cm("late"))
    assert r.status_code in (403, 404), r.text
    wait_for(lambda: sim.call("GET", "/api/v1/namespaces/tmp-ns").status_code == 404, 5, "the namespace gone")
    assert sim.call("GET", "/api/v1/namespaces/tmp-ns/configmaps/inside").status_code == 404


# --------------------------------------------------------------------------
# Kubelet and controllers
# --------------------------------------------------------------------------

SLICES = "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices"


def slice_endpoints(sim: Sim, name: str) -> list[dict]:
    r = sim.call("GET", f"{SLICES}/{name}")
    return (r.json().get("endpoints") or []) if r.status_code == 200 else []


def deployment_status(sim: Sim, name: str) -> dict:
    return sim.ok("GET", f"{APPS}/deployments/{name}").get("status") or {}


def test_kubelet_endpointslices_and_scaling(sim: Sim) -> None:
    c = node_container(lifecycle={"preStop": {"sleep": {"seconds": 1}}})
    d = deployment("node", 1, {"app": "node"}, c)
    d["spec"]["template"]["spec"].update(terminationGracePeriodSeconds=4,
                                         volumes=[{"name": "data", "emptyDir": {}}])
    d["spec"]["strategy"] = {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    sim.ok("POST", f"{APPS}/deployments", d)
    for name, publish in (("node", False), ("node-all", True)):
        sim.ok("POST", f"{NS}/services", {"metadata": {"name": name, "labels": {"tier": "nodes"}},
                                          "spec": {"clusterIP": "None", "selector": {"app": "node"},
                                                   "publishNotReadyAddresses": publish,
                                                   "ports": [{"name": "internal", "port": 8081,
                                                              "targetPort": "internal"}]}})
    eps = wait_for(lambda: [e for e in slice_endpoints(sim, "node-sim") if e["conditions"]["ready"]], 10,
                   "a ready endpoint")
    sl = sim.ok("GET", f"{SLICES}/node-sim")
    assert sl["addressType"] == "IPv4" and sl["ports"] == [{"name": "internal", "port": 8081, "protocol": "TCP"}]
    assert sl["metadata"]["labels"]["kubernetes.io/service-name"] == "node"
    assert sl["metadata"]["labels"]["endpointslice.kubernetes.io/managed-by"] == "endpointslice-controller.k8s.io"
    assert sl["metadata"]["labels"]["tier"] == "nodes"
    ip = eps[0]["addresses"][0]
    assert ip.startswith("127.0.") and ip != "127.0.0.1", ip
    assert eps[0]["targetRef"]["kind"] == "Pod" and eps[0]["nodeName"] == "sim"
    assert requests.get(f"http://{ip}:8081/v2/health/ready", timeout=2).status_code == 200
    pods = sim.ok("GET", "/sim/pods")
    mine = [p for p in pods if p["deployment"] == "node"]
    assert len(mine) == 1 and mine[0]["ip"] == ip and mine[0]["ready"] and mine[0]["port"] == 8081, pods
    pod_dir = os.path.dirname(mine[0]["log"])
    assert os.path.exists(os.path.join(pod_dir, "volumes", "data", "touched")), "--data-dir /data is the emptyDir"
    with open(mine[0]["log"]) as f:
        log = f.read()
    assert "--insecure" in log and f"--listen', '{ip}'" in log, log
    pod = sim.ok("GET", f"{NS}/pods/{mine[0]['name']}")
    assert pod["metadata"]["name"].startswith("node-") and pod["metadata"]["labels"]["pod-template-hash"]
    assert pod["metadata"]["ownerReferences"][0]["kind"] == "Deployment"
    assert pod["status"]["phase"] == "Running" and pod["status"]["podIP"] == ip
    assert pod["status"]["containerStatuses"][0]["ready"] is True
    st = wait_for(lambda: (lambda s: s if s.get("readyReplicas") == 1 else None)(deployment_status(sim, "node")),
                  5, "status readyReplicas 1")
    assert st["replicas"] == 1 and st["updatedReplicas"] == 1 and st["availableReplicas"] == 1
    assert "unavailableReplicas" not in st and st["observedGeneration"] == 1
    conds = {c["type"]: c for c in st["conditions"]}
    assert conds["Available"]["status"] == "True"
    assert conds["Progressing"]["reason"] == "NewReplicaSetAvailable"

    # Up to 3 through the scale subresource.
    sim.ok("PATCH", f"{APPS}/deployments/node/scale", {"spec": {"replicas": 3}}, "application/merge-patch+json")
    wait_for(lambda: len([e for e in slice_endpoints(sim, "node-sim") if e["conditions"]["ready"]]) == 3, 10,
             "3 ready endpoints")
    ips = {e["addresses"][0] for e in slice_endpoints(sim, "node-sim")}
    assert len(ips) == 3, ips
    wait_for(lambda: deployment_status(sim, "node").get("readyReplicas") == 3, 5, "readyReplicas 3")
    pids = {p["pid"] for p in sim.ok("GET", "/sim/pods") if p["deployment"] == "node"}

    # Down to 1: two terminate (preStop 1 s): not ready, still serving, terminating.
    sim.ok("PATCH", f"{APPS}/deployments/node/scale", {"spec": {"replicas": 1}}, "application/merge-patch+json")
    terminating = wait_for(lambda: [e for e in slice_endpoints(sim, "node-sim") if e["conditions"]["terminating"]],
                           3, "terminating endpoints")
    assert len(terminating) == 2, terminating
    assert all(e["conditions"] == {"ready": False, "serving": True, "terminating": True} for e in terminating)
    # publishNotReadyAddresses: `ready` stays true, as the real controller does it.
    all_eps = [e for e in slice_endpoints(sim, "node-all-sim") if e["conditions"]["terminating"]]
    assert all_eps and all(e["conditions"]["ready"] for e in all_eps), all_eps
    st = deployment_status(sim, "node")
    assert st.get("replicas") == 1 and st.get("terminatingReplicas") == 2, st
    wait_for(lambda: len(slice_endpoints(sim, "node-sim")) == 1, 10, "one endpoint left")
    left = {p["pid"] for p in sim.ok("GET", "/sim/pods") if p["deployment"] == "node"}
    gone = pids - left
    assert len(gone) == 2 and not any(alive(pid) for pid in gone), gone
    wait_for(lambda: len(sim.ok("GET", f"{NS}/pods", labelSelector="app=node")["items"]) == 1, 5, "pods removed")


def test_rolling_update(sim: Sim) -> None:
    before = {p["name"] for p in sim.ok("GET", "/sim/pods") if p["deployment"] == "node"}
    gen = sim.ok("PATCH", f"{APPS}/deployments/node", {"spec": {"template": {"metadata": {"annotations": {"rev": "2"}}}}},
                 "application/merge-patch+json")["metadata"]["generation"]
    # maxSurge 1, maxUnavailable 0: a second pod first, then the old one goes.
    wait_for(lambda: len(sim.ok("GET", f"{NS}/pods", labelSelector="app=node")["items"]) == 2, 5, "a surge pod")

    def rolled() -> bool:
        st = deployment_status(sim, "node")
        progressing = {c["type"]: c for c in st.get("conditions", [])}.get("Progressing", {})
        return st.get("observedGeneration", 0) >= gen and st.get("updatedReplicas") == 1 and \
            st.get("replicas") == 1 and progressing.get("reason") == "NewReplicaSetAvailable"

    wait_for(rolled, 15, "the rollout to finish")
    after = {p["name"] for p in sim.ok("GET", "/sim/pods") if p["deployment"] == "node" and not p["terminating"]}
    assert after and not (after & before), (before, after)
    assert len([e for e in slice_endpoints(sim, "node-sim") if e["conditions"]["ready"]]) == 1


def test_crash_loop_and_progress_deadline(sim: Sim) -> None:
    c = node_container(env=[{"name": "CRASH", "value": "1"}], terminationMessagePolicy="FallbackToLogsOnError")
    d = deployment("crash", 1, {"app": "crash"}, c, progressDeadlineSeconds=3)
    d["spec"]["template"]["spec"]["volumes"] = [{"name": "data", "emptyDir": {}}]
    sim.ok("POST", f"{APPS}/deployments", d)

    def crash_looping() -> Optional[dict]:
        items = sim.ok("GET", f"{NS}/pods", labelSelector="app=crash")["items"]
        cs = items[0]["status"].get("containerStatuses", [{}])[0] if items else {}
        waiting = cs.get("state", {}).get("waiting", {})
        return cs if waiting.get("reason") == "CrashLoopBackOff" and cs.get("restartCount", 0) >= 1 else None

    cs = wait_for(crash_looping, 10, "CrashLoopBackOff")
    term = cs["lastState"]["terminated"]
    assert term["exitCode"] == 3 and term["reason"] == "Error", term
    assert "cannot load the artifact" in term["message"], term
    assert cs["ready"] is False

    def timed_out() -> Optional[dict]:
        st = deployment_status(sim, "crash")
        cond = {c["type"]: c for c in st.get("conditions", [])}.get("Progressing", {})
        return st if cond.get("reason") == "ProgressDeadlineExceeded" else None

    st = wait_for(timed_out, 8, "ProgressDeadlineExceeded")
    cond = {c["type"]: c for c in st["conditions"]}
    assert cond["Progressing"]["status"] == "False"
    assert cond["Progressing"]["message"].startswith('ReplicaSet "crash-') and \
        cond["Progressing"]["message"].endswith('" has timed out progressing.'), cond
    assert cond["Available"]["status"] == "False"
    assert "readyReplicas" not in st and st["unavailableReplicas"] == 1, st
    # Deleting the Deployment collects its pods (and stops them).
    sim.ok("DELETE", f"{APPS}/deployments/crash")
    wait_for(lambda: not sim.ok("GET", f"{NS}/pods", labelSelector="app=crash")["items"], 10, "crash pods collected")


def test_liveness_restarts(sim: Sim) -> None:
    c = node_container(env=[{"name": "UNHEALTHY", "value": "1"}],
                       livenessProbe={"httpGet": {"path": "/v2/health/live", "port": "internal"},
                                      "periodSeconds": 1, "failureThreshold": 2})
    d = deployment("sick", 1, {"app": "sick"}, c)
    d["spec"]["template"]["spec"].update(volumes=[{"name": "data", "emptyDir": {}}], terminationGracePeriodSeconds=1)
    sim.ok("POST", f"{APPS}/deployments", d)

    def restarted() -> Optional[dict]:
        items = sim.ok("GET", f"{NS}/pods", labelSelector="app=sick")["items"]
        cs = (items[0]["status"].get("containerStatuses") or [{}])[0] if items else {}
        return cs if cs.get("restartCount", 0) >= 1 else None

    cs = wait_for(restarted, 10, "a liveness restart")
    assert cs["lastState"]["terminated"]["exitCode"] in (0, 143, 137), cs  # SIGTERM, then SIGKILL
    sim.ok("DELETE", f"{APPS}/deployments/sick")


def test_parallel_simulator_killed(sim: Sim) -> None:
    """A second simulator on the same host: its pods get other IPs (shared
    locks), and its pods die with it even on SIGKILL (no orphans)."""
    first = {p["ip"] for p in sim.ok("GET", "/sim/pods") if not p["terminating"]}
    other = Sim(os.path.dirname(sim.dir), name="other")
    try:
        d = deployment("node", 1, {"app": "node"}, node_container())
        d["spec"]["template"]["spec"]["volumes"] = [{"name": "data", "emptyDir": {}}]
        other.ok("POST", f"{APPS}/deployments", d)
        pods = wait_for(lambda: [p for p in other.ok("GET", "/sim/pods") if p["ready"]], 10, "a pod in the other sim")
        # A pod of the first simulator that went away meanwhile (one whose
        # Deployment an earlier test deleted) freed its address for reuse:
        # only addresses held before and after count.
        held = first & {p["ip"] for p in sim.ok("GET", "/sim/pods") if not p["terminating"]}
        assert pods[0]["ip"] not in held, (pods, held)
    finally:
        other.stop(signal.SIGKILL)
    wait_for(lambda: not alive(pods[0]["pid"]), 5, "the killed simulator's pod to die")


# --------------------------------------------------------------------------


def main() -> int:
    tests = [v for k, v in globals().items() if k.startswith("test_") and callable(v)]
    failed = 0
    with tempfile.TemporaryDirectory(prefix="kube-sim-") as tmp:
        sim = Sim(tmp)
        started = time.monotonic()
        pids: set = set()
        try:
            for t in tests:
                t0 = time.monotonic()
                try:
                    t(sim)
                    print(f"ok    {t.__name__} ({time.monotonic() - t0:.1f}s)")
                except Exception:
                    failed += 1
                    print(f"FAIL  {t.__name__} ({time.monotonic() - t0:.1f}s)")
                    traceback.print_exc()
            pids = {p["pid"] for p in sim.ok("GET", "/sim/pods") if p["pid"]}
        finally:
            rc = sim.stop()
        # SIGTERM: a clean exit, every pod process killed.
        if rc != 0 or any(alive(pid) for pid in pids):
            failed += 1
            print(f"FAIL  shutdown: exit {rc}, still alive: {[p for p in pids if alive(p)]}")
        else:
            print(f"ok    shutdown ({len(pids)} pod processes killed)")
        if failed:
            with open(os.path.join(tmp, "state.log")) as f:
                print("--- simulator log (tail) ---\n" + "".join(f.readlines()[-60:]))
        print(f"{len(tests) + 1 - failed} passed, {failed} failed in {time.monotonic() - started:.1f}s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
