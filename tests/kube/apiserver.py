#!/usr/bin/env python3
"""A simulated Kubernetes API server, with a stand-in kubelet and controllers.

What it is for: running wasmscore's unmodified kube-rs clients (the
operator, the router, the CLI) against something that speaks the real
Kubernetes HTTP wire protocol, on one machine, without a cluster.

    python tests/kube/apiserver.py --state-dir DIR [--port 0]
        [--wasmscore /path/to/wasmscore] [--crd deploy/crd.json]
        [--probe-period 0.25] [--bookmark-interval 2]

It listens on 127.0.0.1, writes DIR/kubeconfig (server http://127.0.0.1:PORT,
token "sim", namespace "default") and then, atomically and last,
DIR/apiserver.json = {"port", "url", "pid"}. SIGTERM/SIGINT stop it and
SIGKILL every pod process it started.

Two halves:

* The API server (`Cluster` + `Handler`): an in-memory store with one global
  resourceVersion counter and a bounded event log, serving GET/LIST/WATCH,
  POST, PUT, PATCH (merge, strategic-merge-ish, JSON patch, server-side
  apply with field ownership) and DELETE (finalizers, garbage collection by
  ownerReferences), the status and scale subresources, structural-schema
  defaulting/pruning/validation for custom resources, and Status errors
  worded as the real server words them.

* The stand-in kube-controller-manager + kubelet (`Controllers`, `PodWorker`):
  Deployments become Pods, Pods become real child processes (the image's
  entrypoint is the wasmscore binary) each on its own loopback IP
  127.0.0.N, with readiness/liveness probes, crash-loop backoff, graceful
  termination (preStop, SIGTERM, SIGKILL), rolling updates, Deployment
  status, and EndpointSlices for Services.

Everything that differs from a real cluster on purpose is listed in
tests/kube/README.md; comments below say why where it matters.
Standard library only (jsonschema is used, when importable, only for schema
keywords the built-in validator does not know).
"""

from __future__ import annotations

import argparse
import base64
import bisect
import copy
import fcntl
import hashlib
import http.client
import http.server
import json
import os
import random
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.parse
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Optional

# --------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------

VERBOSE = 1  # 0: errors only, 1: one line per request, 2: + kubelet detail


def log(msg: str, level: int = 1) -> None:
    if level <= VERBOSE:
        sys.stderr.write(f"{time.strftime('%H:%M:%S')} {msg}\n")
        sys.stderr.flush()


def now_rfc3339() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def json_equal(a: Any, b: Any) -> bool:
    """Equality of JSON values: Python's True == 1, JSON's true != 1."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(json_equal(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(map(json_equal, a, b))
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    return type(a) is type(b) and a == b


def drop_nulls(v: Any) -> Any:
    """Go's decoding drops nulls (and omitempty drops empty maps/lists in
    metadata); stored objects never carry explicit nulls here."""
    if isinstance(v, dict):
        return {k: drop_nulls(x) for k, x in v.items() if x is not None}
    if isinstance(v, list):
        return [drop_nulls(x) for x in v]
    return v


def get_path(obj: Any, path: Iterable[str], default: Any = None) -> Any:
    for k in path:
        if not isinstance(obj, dict) or k not in obj:
            return default
        obj = obj[k]
    return obj


def meta(obj: dict) -> dict:
    return obj.setdefault("metadata", {})


# The alphabet Kubernetes uses for generated name suffixes and hashes (no
# vowels, no look-alikes).
SAFE_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"


def random_suffix(n: int = 5) -> str:
    return "".join(random.choice(SAFE_ALPHABET) for _ in range(n))


def safe_hash(value: Any, n: int = 10) -> str:
    digest = hashlib.sha256(json.dumps(value, sort_keys=True).encode()).digest()
    return "".join(SAFE_ALPHABET[b % len(SAFE_ALPHABET)] for b in digest[:n])


# --------------------------------------------------------------------------
# Errors: every failure is a Status object, worded as the real server does
# --------------------------------------------------------------------------


class ApiError(Exception):
    def __init__(self, code: int, reason: str, message: str, details: Optional[dict] = None):
        super().__init__(message)
        self.code, self.reason, self.message, self.details = code, reason, message, details

    def status(self) -> dict:
        body = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if self.details:
            body["details"] = self.details
        return body


def _details(rt: "ResourceType", name: str, **extra: Any) -> dict:
    d = {"name": name}
    if rt.group:  # Go's omitempty: the core group is absent
        d["group"] = rt.group
    d["kind"] = rt.plural
    d.update(extra)
    return d


def not_found(rt: "ResourceType", name: str) -> ApiError:
    return ApiError(404, "NotFound", f'{rt.qualified} "{name}" not found', _details(rt, name))


def already_exists(rt: "ResourceType", name: str) -> ApiError:
    return ApiError(409, "AlreadyExists", f'{rt.qualified} "{name}" already exists', _details(rt, name))


def conflict(rt: "ResourceType", name: str) -> ApiError:
    return ApiError(
        409,
        "Conflict",
        f'Operation cannot be fulfilled on {rt.qualified} "{name}": the object has been modified; '
        "please apply your changes to the latest version and try again",
        _details(rt, name),
    )


def bad_request(message: str) -> ApiError:
    return ApiError(400, "BadRequest", message)


@dataclass
class Cause:
    """One field error: `field: detail`, as field.ErrorList prints."""

    field: str
    reason: str  # FieldValueRequired, FieldValueInvalid, ...
    detail: str

    def text(self) -> str:
        return f"{self.field}: {self.detail}" if self.field else self.detail


def invalid(rt: "ResourceType", name: str, causes: list[Cause]) -> ApiError:
    texts = [c.text() for c in causes]
    summary = texts[0] if len(texts) == 1 else "[" + ", ".join(texts) + "]"
    details = {"name": name}
    if rt.group:
        details["group"] = rt.group
    details["kind"] = rt.kind
    details["causes"] = [{"reason": c.reason, "message": c.detail, "field": c.field} for c in causes]
    return ApiError(422, "Invalid", f'{rt.qualified_kind} "{name}" is invalid: {summary}', details)


# --------------------------------------------------------------------------
# The resources served
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class ResourceType:
    group: str
    version: str
    plural: str
    kind: str
    singular: str
    namespaced: bool = True
    status_subresource: bool = False
    scale_subresource: bool = False
    # metadata.generation is bumped on spec changes (Deployments, CRs, Pods).
    tracks_generation: bool = False
    # DELETE answers with the deleted object (registries that set
    # ReturnDeletedObject: pods, services, namespaces); others answer with a
    # Status "Success" when the object is gone at once.
    returns_deleted_object: bool = False
    # Strategic merge patch is only for built-in types (415 for CRs).
    custom: bool = False
    short_names: tuple = ()

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def qualified(self) -> str:  # deployments.apps
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def qualified_kind(self) -> str:  # Deployment.apps
        return f"{self.kind}.{self.group}" if self.group else self.kind


NAMESPACES = ResourceType("", "v1", "namespaces", "Namespace", "namespace", namespaced=False,
                          returns_deleted_object=True, short_names=("ns",))
SERVICES = ResourceType("", "v1", "services", "Service", "service", status_subresource=True,
                        returns_deleted_object=True, short_names=("svc",))
SECRETS = ResourceType("", "v1", "secrets", "Secret", "secret")
CONFIGMAPS = ResourceType("", "v1", "configmaps", "ConfigMap", "configmap", short_names=("cm",))
PODS = ResourceType("", "v1", "pods", "Pod", "pod", status_subresource=True, tracks_generation=True,
                    returns_deleted_object=True, short_names=("po",))
CORE_EVENTS = ResourceType("", "v1", "events", "Event", "event", short_names=("ev",))
DEPLOYMENTS = ResourceType("apps", "v1", "deployments", "Deployment", "deployment", status_subresource=True,
                           scale_subresource=True, tracks_generation=True, short_names=("deploy",))
ENDPOINTSLICES = ResourceType("discovery.k8s.io", "v1", "endpointslices", "EndpointSlice", "endpointslice")
LEASES = ResourceType("coordination.k8s.io", "v1", "leases", "Lease", "lease")
# Stored and served, not enforced: there is no pod network here (pods are
# processes on loopback).
NETWORKPOLICIES = ResourceType("networking.k8s.io", "v1", "networkpolicies", "NetworkPolicy", "networkpolicy",
                               short_names=("netpol",))
EVENTS = ResourceType("events.k8s.io", "v1", "events", "Event", "event", short_names=("ev",))
ENDPOINTS = ResourceType("wasmscore.dev", "v1alpha1", "endpoints", "Endpoint", "endpoint",
                         status_subresource=True, tracks_generation=True, custom=True, short_names=("wse",))
CRDS = ResourceType("apiextensions.k8s.io", "v1", "customresourcedefinitions", "CustomResourceDefinition",
                    "customresourcedefinition", namespaced=False, status_subresource=True,
                    tracks_generation=True, short_names=("crd", "crds"))

RESOURCES = [NAMESPACES, SERVICES, SECRETS, CONFIGMAPS, PODS, CORE_EVENTS, DEPLOYMENTS, ENDPOINTSLICES,
             LEASES, NETWORKPOLICIES, EVENTS, ENDPOINTS, CRDS]
BY_GVR = {(rt.group, rt.version, rt.plural): rt for rt in RESOURCES}
BY_KIND = {(rt.api_version, rt.kind): rt for rt in RESOURCES}

# Field selectors each resource accepts besides metadata.name/namespace
# (the real server answers 400 for any other field label). None: any field
# (events accept many; evaluated generically).
FIELD_LABELS: dict[str, Optional[set]] = {
    "pods": {"spec.nodeName", "spec.restartPolicy", "spec.schedulerName", "spec.serviceAccountName",
             "spec.hostNetwork", "status.phase", "status.podIP", "status.nominatedNodeName"},
    "secrets": {"type"},
    "namespaces": {"status.phase"},
    "events": None,
}


# --------------------------------------------------------------------------
# Label and field selectors
# --------------------------------------------------------------------------

Predicate = Callable[[dict], bool]


def _split_top_level(text: str) -> list[str]:
    """Split a selector on the commas that are not inside `in (a,b)`."""
    parts, depth, cur = [], 0, ""
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    return [p.strip() for p in parts if p.strip()]


_SET_TERM = re.compile(r"^([^\s!=(),]+)\s+(in|notin)\s+\(([^)]*)\)$")
_EQ_TERM = re.compile(r"^([^\s!=(),]+)\s*(==|=|!=)\s*([^\s!=(),]*)$")
_KEY = re.compile(r"^(!?)\s*([^\s!=(),]+)$")


def parse_label_selector(text: str) -> list[Predicate]:
    """`k=v`, `k==v`, `k!=v`, `k`, `!k`, `k in (a,b)`, `k notin (a,b)`."""
    preds: list[Predicate] = []
    for term in _split_top_level(text or ""):
        m = _SET_TERM.match(term)
        if m:
            key, op, values = m.group(1), m.group(2), {v.strip() for v in m.group(3).split(",") if v.strip()}
            if op == "in":
                preds.append(lambda l, k=key, vs=values: l.get(k) in vs)
            else:  # notin also matches objects without the label, as upstream
                preds.append(lambda l, k=key, vs=values: l.get(k) not in vs)
            continue
        m = _EQ_TERM.match(term)
        if m:
            key, op, value = m.groups()
            if op == "!=":
                preds.append(lambda l, k=key, v=value: l.get(k) != v)
            else:
                preds.append(lambda l, k=key, v=value: l.get(k) == v)
            continue
        m = _KEY.match(term)
        if m:
            neg, key = m.groups()
            preds.append((lambda l, k=key: k not in l) if neg else (lambda l, k=key: k in l))
            continue
        raise bad_request(f"unable to parse requirement: found '{term}', expected: valid label selector")
    return preds


def labels_match(preds: list[Predicate], obj: dict) -> bool:
    labels = get_path(obj, ("metadata", "labels")) or {}
    return all(p(labels) for p in preds)


def selector_string(selector: dict) -> str:
    """A LabelSelector (matchLabels + matchExpressions) as text, as the scale
    subresource's status.selector shows it."""
    terms = [f"{k}={v}" for k, v in sorted((selector.get("matchLabels") or {}).items())]
    for e in selector.get("matchExpressions") or []:
        op, key, values = e.get("operator"), e.get("key"), e.get("values") or []
        if op == "In":
            terms.append(f"{key} in ({','.join(sorted(values))})")
        elif op == "NotIn":
            terms.append(f"{key} notin ({','.join(sorted(values))})")
        elif op == "Exists":
            terms.append(key)
        elif op == "DoesNotExist":
            terms.append(f"!{key}")
    return ",".join(terms)


def field_value(obj: dict, path: str) -> str:
    v = get_path(obj, path.split("."))
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def parse_field_selector(rt: ResourceType, text: str) -> list[Predicate]:
    """`path=v`, `path==v`, `path!=v`; unsupported field labels are refused
    with 400, as the real server does."""
    preds: list[Predicate] = []
    allowed = FIELD_LABELS.get(rt.plural, set())
    for term in _split_top_level(text or ""):
        m = re.match(r"^([^=!]+)(==|=|!=)(.*)$", term)
        if not m:
            raise bad_request(f"invalid selector: '{text}'; can't understand '{term}'")
        path, op, value = m.group(1).strip(), m.group(2), m.group(3).strip()
        if path not in ("metadata.name", "metadata.namespace") and allowed is not None and path not in allowed:
            raise bad_request(f'field label not supported: {path}')
        if op == "!=":
            preds.append(lambda o, p=path, v=value: field_value(o, p) != v)
        else:
            preds.append(lambda o, p=path, v=value: field_value(o, p) == v)
    return preds


# --------------------------------------------------------------------------
# Patches: JSON merge (RFC 7386), strategic merge (approximated), JSON
# patch (RFC 6902)
# --------------------------------------------------------------------------


def merge_patch(target: Any, patch: Any) -> Any:
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            result.pop(k, None)
        else:
            result[k] = merge_patch(result.get(k), v)
    return result


# Lists that strategic merge patch merges by a key rather than replacing
# (the patchMergeKey of the Go types; only the ones wasmscore's objects use).
SMP_MERGE_KEYS = {
    "containers": "name", "initContainers": "name", "ephemeralContainers": "name", "env": "name",
    "volumes": "name", "volumeMounts": "mountPath", "imagePullSecrets": "name", "ownerReferences": "uid",
    "conditions": "type", "ports": None,  # containerPort for containers, port for services
}
# Lists of scalars that strategic merge patch unions.
SMP_SET_LISTS = {"finalizers"}


def _smp_list_key(name: str, items: list) -> Optional[str]:
    if name == "ports":
        if all(isinstance(i, dict) and "containerPort" in i for i in items):
            return "containerPort"
        if all(isinstance(i, dict) and "port" in i for i in items):
            return "port"
        return None
    return SMP_MERGE_KEYS.get(name)


def strategic_merge_patch(target: Any, patch: Any) -> Any:
    """A merge patch, except the known keyed lists merge item by item (with
    `$patch: delete` items) and `finalizers` unions. Other directives
    (`$retainKeys`, `$setElementOrder`) are dropped."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    if patch.get("$patch") == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if k != "$patch"}
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if k.startswith("$"):
            continue
        if v is None:
            result.pop(k, None)
        elif isinstance(v, list) and isinstance(result.get(k), list):
            result[k] = _smp_list(k, result[k], v)
        elif isinstance(v, dict):
            result[k] = strategic_merge_patch(result.get(k), v)
        else:
            result[k] = copy.deepcopy(v)
    return result


def _smp_list(name: str, current: list, patch: list) -> list:
    if name in SMP_SET_LISTS:
        return current + [x for x in patch if x not in current]
    key = _smp_list_key(name, current + [p for p in patch if isinstance(p, dict) and p.get("$patch") != "delete"])
    if key is None or not all(isinstance(p, dict) for p in patch):
        return copy.deepcopy(patch)
    out = copy.deepcopy(current)
    for item in patch:
        idx = next((i for i, c in enumerate(out) if isinstance(c, dict) and c.get(key) == item.get(key)), None)
        if item.get("$patch") == "delete":
            if idx is not None:
                out.pop(idx)
        elif idx is None:
            out.append(strategic_merge_patch({}, item))
        else:
            out[idx] = strategic_merge_patch(out[idx], item)
    return out


class PatchFailed(Exception):
    pass


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise PatchFailed(f"JSON pointer must start with '/': {path!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _container(doc: Any, tokens: list[str], path: str) -> Any:
    for t in tokens[:-1]:
        if isinstance(doc, dict) and t in doc:
            doc = doc[t]
        elif isinstance(doc, list) and t.isdigit() and int(t) < len(doc):
            doc = doc[int(t)]
        else:
            raise PatchFailed(f"doc is missing path: {path!r}")
    return doc


def _lookup(doc: Any, path: str) -> tuple[bool, Any]:
    cur = doc
    for t in _pointer(path):
        if isinstance(cur, dict) and t in cur:
            cur = cur[t]
        elif isinstance(cur, list) and t.isdigit() and int(t) < len(cur):
            cur = cur[int(t)]
        else:
            return False, None
    return True, cur


def _add(doc: Any, path: str, value: Any) -> Any:
    tokens = _pointer(path)
    if not tokens:
        return copy.deepcopy(value)
    parent, last = _container(doc, tokens, path), tokens[-1]
    if isinstance(parent, dict):
        parent[last] = copy.deepcopy(value)
    elif isinstance(parent, list):
        idx = len(parent) if last == "-" else (int(last) if last.isdigit() else -1)
        if not 0 <= idx <= len(parent):
            raise PatchFailed(f"add operation index out of bounds: {path!r}")
        parent.insert(idx, copy.deepcopy(value))
    else:
        raise PatchFailed(f"doc is missing path: {path!r}")
    return doc


def _remove(doc: Any, path: str) -> tuple[Any, Any]:
    tokens = _pointer(path)
    if not tokens:
        raise PatchFailed("cannot remove the whole document")
    parent, last = _container(doc, tokens, path), tokens[-1]
    if isinstance(parent, dict) and last in parent:
        return doc, parent.pop(last)
    if isinstance(parent, list) and last.isdigit() and int(last) < len(parent):
        return doc, parent.pop(int(last))
    raise PatchFailed(f"unable to remove nonexistent key: {path!r}")


def json_patch(doc: Any, ops: Any) -> Any:
    """RFC 6902. As evanphx/json-patch (the server's library), `test` of a
    missing member against null passes: kube-rs's finalizer helper relies on
    `test /metadata/finalizers null` when there are none."""
    if not isinstance(ops, list):
        raise PatchFailed("a JSON patch must be a list of operations")
    doc = copy.deepcopy(doc)
    for op in ops:
        kind, path = op.get("op"), op.get("path", "")
        if kind == "add":
            doc = _add(doc, path, op.get("value"))
        elif kind == "remove":
            doc, _ = _remove(doc, path)
        elif kind == "replace":
            if not _lookup(doc, path)[0]:
                raise PatchFailed(f"replace operation does not apply: doc is missing key: {path}")
            doc, _ = _remove(doc, path) if path else (doc, None)
            doc = _add(doc, path, op.get("value"))
        elif kind in ("move", "copy"):
            found, value = _lookup(doc, op.get("from", ""))
            if not found:
                raise PatchFailed(f"{kind} operation does not apply: doc is missing from path: {op.get('from')}")
            if kind == "move":
                doc, value = _remove(doc, op["from"])
            doc = _add(doc, path, value)
        elif kind == "test":
            found, value = _lookup(doc, path)
            if not json_equal(value if found else None, op.get("value")):
                raise PatchFailed(f"testing value {path} failed: test failed")
        else:
            raise PatchFailed(f"unexpected kind: {kind!r}")
    return doc


# --------------------------------------------------------------------------
# Field ownership (managedFields) and server-side apply
#
# Model: an object's fields are its leaf paths (tuples of keys). Maps are
# walked; every list is one atomic leaf (the real server merges lists of
# objects keyed by name item by item; here two managers cannot own
# different containers of one list). Each owner is keyed by (manager,
# operation, subresource), as the real managedFields entries are.
# --------------------------------------------------------------------------

Path = tuple

# metadata fields that are the server's, never owned.
UNOWNED_METADATA = {"name", "namespace", "uid", "resourceVersion", "generation", "creationTimestamp",
                    "deletionTimestamp", "deletionGracePeriodSeconds", "managedFields", "selfLink"}


def field_paths(obj: dict) -> dict[Path, Any]:
    out: dict[Path, Any] = {}

    def walk(v: Any, prefix: Path) -> None:
        if isinstance(v, dict) and v:
            for k, x in v.items():
                walk(x, prefix + (k,))
        else:
            out[prefix] = v

    for k, v in (obj or {}).items():
        if k in ("apiVersion", "kind"):
            continue
        if k == "metadata" and isinstance(v, dict):
            for mk, mv in v.items():
                if mk not in UNOWNED_METADATA:
                    walk(mv, ("metadata", mk))
        else:
            walk(v, (k,))
    return out


def scoped(paths: dict[Path, Any], rt: ResourceType, sub: str) -> dict[Path, Any]:
    """The fields a write to RT (or its SUB subresource) can touch."""
    if sub == "status":
        return {p: v for p, v in paths.items() if p[0] == "status"}
    if rt.status_subresource:
        return {p: v for p, v in paths.items() if p[0] != "status"}
    return paths


def overlaps(p: Path, q: Path) -> bool:
    n = min(len(p), len(q))
    return p[:n] == q[:n]


def path_text(p: Path) -> str:
    return "." + ".".join(p)


@dataclass
class Owned:
    paths: set
    time: str
    api_version: str


OwnerKey = tuple  # (manager, operation, subresource)
Owners = dict  # OwnerKey -> Owned


def copy_owners(owners: Owners) -> Owners:
    return {k: Owned(set(o.paths), o.time, o.api_version) for k, o in owners.items()}


def owners_equal(a: Owners, b: Owners) -> bool:
    return a.keys() == b.keys() and all(a[k].paths == b[k].paths for k in a)


def record_update(owners: Owners, manager: str, sub: str, old: Optional[dict], new: dict,
                  api_version: str) -> Owners:
    """A non-apply write (create, PUT, merge/JSON patch): the manager takes
    ownership (operation Update) of every field it changed, from whoever had
    it; removed fields lose their owners. Updates never conflict."""
    old_p, new_p = field_paths(old or {}), field_paths(new)
    changed = {p for p, v in new_p.items() if p not in old_p or not json_equal(old_p[p], v)}
    touched = changed | (set(old_p) - set(new_p))
    out = copy_owners(owners)
    me = (manager, "Update", sub)
    for key, o in out.items():
        if key != me:
            o.paths = {q for q in o.paths if not any(overlaps(q, p) for p in touched)}
    mine = out.setdefault(me, Owned(set(), now_rfc3339(), api_version))
    before = set(mine.paths)
    mine.paths = {q for q in mine.paths if q in new_p} | changed
    if mine.paths != before:
        mine.time = now_rfc3339()
    return {k: o for k, o in out.items() if o.paths}


def manager_text(key: OwnerKey, api_version: str) -> str:
    """How the real server names a manager in a conflict message."""
    manager, op, sub = key
    text = json.dumps(manager)
    if sub:
        text += f" with subresource {json.dumps(sub)}"
    if op == "Update":
        text += f" using {api_version}"
    return text


def apply_conflicts(owners: Owners, manager: str, old: dict, config: dict[Path, Any]) -> list[tuple[OwnerKey, Path]]:
    """Fields of the config that another manager owns with another value.
    The same value is no conflict: ownership becomes shared."""
    found = []
    for key, o in owners.items():
        if key[0] == manager:
            continue
        for p, v in config.items():
            if any(overlaps(p, q) for q in o.paths) and not json_equal(get_path(old, p), v):
                found.append((key, p))
    return found


def conflict_error(rt: ResourceType, name: str, owners: Owners, found: list[tuple[OwnerKey, Path]]) -> ApiError:
    causes = [{"reason": "FieldManagerConflict",
               "message": f"conflict with {manager_text(k, owners[k].api_version)}",
               "field": path_text(p)} for k, p in found]
    if len(found) == 1:
        k, p = found[0]
        msg = f"Apply failed with 1 conflict: conflict with {manager_text(k, owners[k].api_version)}: {path_text(p)}"
    else:
        lines = []
        for k in sorted({k for k, _ in found}):
            lines.append(f"conflicts with {manager_text(k, owners[k].api_version)}:")
            lines += [f"- {path_text(p)}" for kk, p in found if kk == k]
        msg = f"Apply failed with {len(found)} conflicts: " + "\n".join(lines)
    return ApiError(409, "Conflict", msg, dict(_details(rt, name), causes=causes))


def deep_merge(base: Any, config: Any) -> Any:
    """Apply's merge: maps merge key by key, anything else (lists included,
    see the model above) is replaced by the config's value."""
    if isinstance(base, dict) and isinstance(config, dict):
        out = dict(base)
        for k, v in config.items():
            out[k] = deep_merge(base.get(k), v)
        return out
    return copy.deepcopy(config)


def delete_path(obj: dict, p: Path) -> None:
    """Remove a leaf, and the maps it leaves empty."""
    trail = [obj]
    for k in p[:-1]:
        nxt = trail[-1].get(k) if isinstance(trail[-1], dict) else None
        if not isinstance(nxt, dict):
            return
        trail.append(nxt)
    trail[-1].pop(p[-1], None)
    for depth in range(len(p) - 1, 0, -1):
        if trail[depth] == {}:
            trail[depth - 1].pop(p[depth - 1], None)


def server_side_apply(rt: ResourceType, name: str, sub: str, old: dict, owners: Owners, config: dict,
                      manager: str, force: bool) -> tuple[dict, Owners]:
    """Merge MANAGER's applied CONFIG into OLD. Returns the new object and
    owners. Without FORCE, fields another manager owns with another value
    are a 409; fields MANAGER applied before and left out now are removed
    unless someone else still owns them."""
    cfg = scoped(field_paths(config), rt, sub)
    found = apply_conflicts(owners, manager, old, cfg)
    if found and not force:
        raise conflict_error(rt, name, owners, found)
    out = copy_owners(owners)
    for key, p in found:  # forced: the others lose those fields
        out[key].paths = {q for q in out[key].paths if not overlaps(q, p)}
    me = (manager, "Apply", sub)
    before = out.get(me, Owned(set(), now_rfc3339(), rt.api_version)).paths
    # A deep copy: delete_path below must not touch the stored object.
    new = deep_merge(copy.deepcopy(old), _scoped_config(config, rt, sub))
    others = [q for k, o in out.items() if k != me for q in o.paths]
    for p in before - set(cfg):
        if not any(overlaps(p, q) for q in cfg) and not any(overlaps(p, q) for q in others):
            delete_path(new, p)
    if me not in out or out[me].paths != set(cfg):
        out[me] = Owned(set(cfg), now_rfc3339(), rt.api_version)
    return new, {k: o for k, o in out.items() if o.paths}


def _scoped_config(config: dict, rt: ResourceType, sub: str) -> dict:
    """What of an applied config may land on the object."""
    cfg = {k: v for k, v in config.items() if k not in ("apiVersion", "kind", "metadata")}
    cfg["metadata"] = {k: v for k, v in (config.get("metadata") or {}).items() if k not in UNOWNED_METADATA}
    if sub == "status":
        return {"status": config.get("status")} if "status" in config else {}
    if rt.status_subresource:
        cfg.pop("status", None)
    return cfg


def fields_v1(paths: set) -> dict:
    root: dict = {}
    for p in sorted(paths):
        node = root
        for k in p:
            node = node.setdefault(f"f:{k}", {})
    return root


def render_managed_fields(owners: Owners) -> list[dict]:
    out = []
    for (manager, op, sub), o in sorted(owners.items(), key=lambda kv: (kv[0][1] != "Apply", kv[0])):
        entry = {"manager": manager, "operation": op,  # (manager dropped below when empty: omitempty) "apiVersion": o.api_version, "time": o.time,
                 "fieldsType": "FieldsV1", "fieldsV1": fields_v1(o.paths)}
        if sub:
            entry["subresource"] = sub
        if not manager:
            del entry["manager"]
        out.append(entry)
    return out


# --------------------------------------------------------------------------
# Custom resources: structural schema defaulting, pruning and validation
# (openAPIV3Schema), with the apiserver's wording of errors
# --------------------------------------------------------------------------

# Keywords checked here; a schema with others (oneOf, anyOf, allOf, not,
# uniqueItems, multipleOf, CEL x-kubernetes-validations ...) is also run
# through jsonschema when it is importable (CEL never is).
KNOWN_KEYWORDS = {"type", "properties", "items", "required", "enum", "pattern", "minimum", "maximum",
                  "exclusiveMinimum", "exclusiveMaximum", "minLength", "maxLength", "minItems", "maxItems",
                  "minProperties", "maxProperties", "additionalProperties", "nullable", "default",
                  "description", "format", "title", "example", "x-kubernetes-preserve-unknown-fields",
                  "x-kubernetes-int-or-string", "x-kubernetes-embedded-resource", "x-kubernetes-list-type",
                  "x-kubernetes-list-map-keys", "x-kubernetes-map-type"}


def _go_value(v: Any) -> str:
    """A value as Go's %v/%q shows it in field errors."""
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    if isinstance(v, (dict, list)):
        return json.dumps(v, separators=(",", ":"))
    return str(v)


def _json_type(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, int):
        return "integer"
    if isinstance(v, float):
        return "number"
    if isinstance(v, str):
        return "string"
    return "array" if isinstance(v, list) else "object"


def _type_ok(v: Any, schema: dict) -> bool:
    want, got = schema.get("type"), _json_type(v)
    if got == "null":
        return bool(schema.get("nullable"))
    if schema.get("x-kubernetes-int-or-string"):
        return got in ("integer", "string")
    if not want:
        return True
    return got == want or (want == "number" and got == "integer")


def schema_validate(v: Any, schema: dict, path: str) -> list[Cause]:
    if not _type_ok(v, schema):
        got = _json_type(v)
        return [Cause(path, "FieldValueTypeInvalid",
                      f'Invalid value: "{got}": {path} in body must be of type {schema.get("type")}: "{got}"')]
    if v is None:
        return []
    errs: list[Cause] = []
    bound = lambda x: _go_value(x)  # noqa: E731
    if "enum" in schema and not any(json_equal(v, e) for e in schema["enum"]):
        supported = ", ".join(_go_value(e) for e in schema["enum"])
        errs.append(Cause(path, "FieldValueNotSupported", f"Unsupported value: {_go_value(v)}: supported values: {supported}"))
    if isinstance(v, str):
        if "maxLength" in schema and len(v) > schema["maxLength"]:
            errs.append(Cause(path, "FieldValueTooLong", f"Too long: may not be more than {schema['maxLength']} bytes"))
        if "minLength" in schema and len(v) < schema["minLength"]:
            errs.append(Cause(path, "FieldValueInvalid",
                              f"Invalid value: {_go_value(v)}: {path} in body should be at least {schema['minLength']} chars long"))
        if "pattern" in schema and not re.search(schema["pattern"], v):
            errs.append(Cause(path, "FieldValueInvalid",
                              f"Invalid value: {_go_value(v)}: {path} in body should match '{schema['pattern']}'"))
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        if "maximum" in schema and v > schema["maximum"]:
            errs.append(Cause(path, "FieldValueInvalid",
                              f"Invalid value: {_go_value(v)}: {path} in body should be less than or equal to {bound(schema['maximum'])}"))
        if "minimum" in schema and v < schema["minimum"]:
            errs.append(Cause(path, "FieldValueInvalid",
                              f"Invalid value: {_go_value(v)}: {path} in body should be greater than or equal to {bound(schema['minimum'])}"))
    if isinstance(v, list):
        if "maxItems" in schema and len(v) > schema["maxItems"]:
            errs.append(Cause(path, "FieldValueTooMany", f"Too many: {len(v)}: must have at most {schema['maxItems']} items"))
        if "minItems" in schema and len(v) < schema["minItems"]:
            errs.append(Cause(path, "FieldValueInvalid",
                              f"Invalid value: {len(v)}: {path} in body should have at least {schema['minItems']} items"))
        if isinstance(schema.get("items"), dict):
            for i, item in enumerate(v):
                errs += schema_validate(item, schema["items"], f"{path}[{i}]")
    if isinstance(v, dict):
        for req in schema.get("required") or []:
            if req not in v:
                errs.append(Cause(f"{path}.{req}", "FieldValueRequired", "Required value"))
        props = schema.get("properties") or {}
        extra = schema.get("additionalProperties")
        for k, x in v.items():
            if k in props:
                errs += schema_validate(x, props[k], f"{path}.{k}")
            elif isinstance(extra, dict):
                errs += schema_validate(x, extra, f"{path}[{k}]")
    return errs


def schema_default(v: Any, schema: dict) -> Any:
    """Structural defaulting: absent (or null, when not nullable) properties
    take their `default`, recursively, as on every read and write."""
    if isinstance(v, dict):
        for k, sub in (schema.get("properties") or {}).items():
            if "default" in sub and (k not in v or (v[k] is None and not sub.get("nullable"))):
                v[k] = copy.deepcopy(sub["default"])
            if k in v:
                v[k] = schema_default(v[k], sub)
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for k in v:
                if k not in (schema.get("properties") or {}):
                    v[k] = schema_default(v[k], extra)
    elif isinstance(v, list) and isinstance(schema.get("items"), dict):
        return [schema_default(x, schema["items"]) for x in v]
    return v


def schema_prune(v: Any, schema: dict) -> Any:
    """Structural pruning: fields the schema does not know are dropped
    silently, unless x-kubernetes-preserve-unknown-fields."""
    if isinstance(v, dict):
        props = schema.get("properties") or {}
        extra = schema.get("additionalProperties")
        keep = schema.get("x-kubernetes-preserve-unknown-fields") or extra is True
        out = {}
        for k, x in v.items():
            if k in props:
                out[k] = schema_prune(x, props[k])
            elif isinstance(extra, dict):
                out[k] = schema_prune(x, extra)
            elif keep:
                out[k] = x
        return out
    if isinstance(v, list) and isinstance(schema.get("items"), dict):
        return [schema_prune(x, schema["items"]) for x in v]
    return v


def _uses_unknown_keywords(schema: Any) -> bool:
    if not isinstance(schema, dict):
        return False
    if any(k not in KNOWN_KEYWORDS for k in schema):
        return True
    children = list((schema.get("properties") or {}).values())
    children += [schema[k] for k in ("items", "additionalProperties") if isinstance(schema.get(k), dict)]
    return any(_uses_unknown_keywords(c) for c in children)


def _to_json_schema(schema: Any) -> Any:
    """OpenAPI v3 (Kubernetes flavour) to JSON Schema, for jsonschema."""
    if isinstance(schema, list):
        return [_to_json_schema(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _to_json_schema(v) for k, v in schema.items() if not k.startswith("x-kubernetes-") and k != "nullable"}
    if schema.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    return out


def jsonschema_causes(v: Any, schema: dict, path: str) -> list[Cause]:
    try:
        import jsonschema  # optional
    except ImportError:
        return []
    causes = []
    for e in jsonschema.Draft4Validator(_to_json_schema(schema)).iter_errors(v):
        where = path + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in e.absolute_path)
        causes.append(Cause(where, "FieldValueInvalid", f"Invalid value: {e.message}"))
    return causes


class CrdSchemas:
    """The openAPIV3Schema of each served custom resource, from the stored
    CustomResourceDefinition objects (so --crd, or a client creating the
    CRD, both work)."""

    @staticmethod
    def schema_for(cluster: "Cluster", rt: ResourceType) -> Optional[dict]:
        crd = cluster.peek(CRDS, "", f"{rt.plural}.{rt.group}")
        if crd is None:
            return None
        for v in get_path(crd, ("spec", "versions")) or []:
            if v.get("name") == rt.version:
                return get_path(v, ("schema", "openAPIV3Schema"))
        return None

    @staticmethod
    def prepare(cluster: "Cluster", rt: ResourceType, obj: dict) -> None:
        """Default, prune and validate OBJ in place (spec and status)."""
        schema = CrdSchemas.schema_for(cluster, rt)
        if not schema:
            return
        name = get_path(obj, ("metadata", "name"), "")
        props = schema.get("properties") or {}
        causes: list[Cause] = []
        for part in ("spec", "status"):
            sub = props.get(part)
            if sub is None:
                if part in obj and not schema.get("x-kubernetes-preserve-unknown-fields"):
                    obj.pop(part)  # pruned: the schema has no such field
                continue
            if part in obj:
                obj[part] = schema_default(schema_prune(obj[part], sub), sub)
            elif "default" in sub:
                obj[part] = schema_default(copy.deepcopy(sub["default"]), sub)
            if part in obj:
                causes += schema_validate(obj[part], sub, part)
                if not causes and _uses_unknown_keywords(sub):
                    causes += jsonschema_causes(obj[part], sub, part)
        for req in schema.get("required") or []:
            if req not in obj and req not in ("apiVersion", "kind", "metadata"):
                causes.append(Cause(req, "FieldValueRequired", "Required value"))
        if causes:
            raise invalid(rt, name, causes)


# --------------------------------------------------------------------------
# Per-type defaulting and validation (the parts of the real registries'
# strategies that wasmscore's clients can notice)
# --------------------------------------------------------------------------

DNS1123_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
DNS1123_SUBDOMAIN = DNS1123_LABEL + r"(\." + DNS1123_LABEL + r")*"
DNS1035_LABEL = r"[a-z]([-a-z0-9]*[a-z0-9])?"
LABEL_VALUE = r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?"
QUALIFIED_NAME = r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]"


def _name_causes(rt: ResourceType, name: str) -> list[Cause]:
    if rt is SERVICES:
        rule, limit, text = DNS1035_LABEL, 63, (
            "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an "
            "alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', "
            f"regex used for validation is '{DNS1035_LABEL}')")
    elif rt is NAMESPACES:
        rule, limit, text = DNS1123_LABEL, 63, (
            "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must "
            "start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for "
            f"validation is '{DNS1123_LABEL}')")
    else:
        rule, limit, text = DNS1123_SUBDOMAIN, 253, (
            "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', "
            "and must start and end with an alphanumeric character (e.g. 'example.com', regex used for "
            f"validation is '{DNS1123_SUBDOMAIN}')")
    causes = []
    if len(name) > limit:
        causes.append(Cause("metadata.name", "FieldValueInvalid",
                            f"Invalid value: {json.dumps(name)}: must be no more than {limit} characters"))
    if not re.fullmatch(rule, name):
        causes.append(Cause("metadata.name", "FieldValueInvalid", f"Invalid value: {json.dumps(name)}: {text}"))
    return causes


def _label_causes(labels: dict) -> list[Cause]:
    causes = []
    for k, v in (labels or {}).items():
        name = k.split("/", 1)[-1]
        if not re.fullmatch(QUALIFIED_NAME, name) or len(name) > 63:
            causes.append(Cause("metadata.labels", "FieldValueInvalid",
                                f"Invalid value: {json.dumps(k)}: name part must consist of alphanumeric characters, "
                                "'-', '_' or '.', and must start and end with an alphanumeric character"))
        if not isinstance(v, str) or len(v) > 63:
            causes.append(Cause("metadata.labels", "FieldValueInvalid",
                                f"Invalid value: {json.dumps(v)}: must be no more than 63 characters"))
        elif not re.fullmatch(LABEL_VALUE, v):
            causes.append(Cause("metadata.labels", "FieldValueInvalid",
                                f"Invalid value: {json.dumps(v)}: a valid label must be an empty string or consist of "
                                "alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric "
                                f"character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is "
                                f"'{LABEL_VALUE}')"))
    return causes


def default_pod_spec(spec: dict) -> None:
    """The defaults the real API server fills in a pod (template) spec."""
    spec.setdefault("restartPolicy", "Always")
    spec.setdefault("terminationGracePeriodSeconds", 30)
    spec.setdefault("dnsPolicy", "ClusterFirst")
    spec.setdefault("schedulerName", "default-scheduler")
    spec.setdefault("securityContext", {})
    for c in (spec.get("containers") or []) + (spec.get("initContainers") or []):
        c.setdefault("terminationMessagePath", "/dev/termination-log")
        c.setdefault("terminationMessagePolicy", "File")
        image = c.get("image", "")
        tagged = "@" in image or ":" in image.rsplit("/", 1)[-1]
        c.setdefault("imagePullPolicy", "IfNotPresent" if tagged and not image.endswith(":latest") else "Always")
        for p in c.get("ports") or []:
            p.setdefault("protocol", "TCP")
        for probe_name in ("readinessProbe", "livenessProbe", "startupProbe"):
            probe = c.get(probe_name)
            if isinstance(probe, dict):
                for k, v in (("timeoutSeconds", 1), ("periodSeconds", 10), ("successThreshold", 1),
                             ("failureThreshold", 3)):
                    probe.setdefault(k, v)
                if isinstance(probe.get("httpGet"), dict):
                    probe["httpGet"].setdefault("scheme", "HTTP")
        for e in c.get("env") or []:
            ref = get_path(e, ("valueFrom", "fieldRef"))
            if isinstance(ref, dict):
                ref.setdefault("apiVersion", "v1")


def default_deployment(obj: dict) -> None:
    spec = obj.setdefault("spec", {})
    spec.setdefault("replicas", 1)
    strategy = spec.setdefault("strategy", {})
    strategy.setdefault("type", "RollingUpdate")
    if strategy["type"] == "RollingUpdate":
        ru = strategy.setdefault("rollingUpdate", {})
        ru.setdefault("maxUnavailable", "25%")
        ru.setdefault("maxSurge", "25%")
    spec.setdefault("revisionHistoryLimit", 10)
    spec.setdefault("progressDeadlineSeconds", 600)
    default_pod_spec(spec.setdefault("template", {}).setdefault("spec", {}))


def validate_deployment(obj: dict, old: Optional[dict]) -> list[Cause]:
    spec = obj.get("spec") or {}
    selector = spec.get("selector")
    causes = []
    if not selector:
        causes.append(Cause("spec.selector", "FieldValueRequired", "Required value"))
    else:
        labels = get_path(spec, ("template", "metadata", "labels")) or {}
        if not labels_match(parse_label_selector(selector_string(selector)), {"metadata": {"labels": labels}}):
            causes.append(Cause("spec.template.metadata.labels", "FieldValueInvalid",
                                f"Invalid value: {_go_value(labels)}: `selector` does not match template `labels`"))
        if old is not None and not json_equal(selector, get_path(old, ("spec", "selector"))):
            causes.append(Cause("spec.selector", "FieldValueInvalid",
                                f"Invalid value: {_go_value(selector)}: field is immutable"))
    if not get_path(spec, ("template", "spec", "containers")):
        causes.append(Cause("spec.template.spec.containers", "FieldValueRequired", "Required value"))
    if isinstance(spec.get("replicas"), int) and spec["replicas"] < 0:
        causes.append(Cause("spec.replicas", "FieldValueInvalid",
                            f"Invalid value: {spec['replicas']}: must be greater than or equal to 0"))
    return causes


def normalize_secret(obj: dict) -> None:
    """stringData is write-only: merged into data (base64) and dropped."""
    string_data = obj.pop("stringData", None) or {}
    data = obj.setdefault("data", {})
    for k, v in string_data.items():
        data[k] = base64.b64encode(str(v).encode()).decode()
    if not data:
        obj.pop("data")
    obj.setdefault("type", "Opaque")


def normalize_namespace(obj: dict) -> None:
    m = meta(obj)
    m.setdefault("labels", {})["kubernetes.io/metadata.name"] = m["name"]
    obj.setdefault("spec", {})["finalizers"] = ["kubernetes"]
    obj["status"] = {"phase": "Terminating" if m.get("deletionTimestamp") else "Active"}


def normalize_crd(obj: dict, old: Optional[dict]) -> None:
    """A CRD is accepted and established at once (conditions kept from
    before, so that a repeated apply stays a no-op)."""
    spec = obj.get("spec") or {}
    t = now_rfc3339()
    old_conditions = get_path(old, ("status", "conditions"))
    obj["status"] = {
        "acceptedNames": spec.get("names") or {},
        "storedVersions": [v.get("name") for v in spec.get("versions") or [] if v.get("storage")],
        "conditions": old_conditions or [
            {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts",
             "message": "no conflicts found", "lastTransitionTime": t},
            {"type": "Established", "status": "True", "reason": "InitialNamesAccepted",
             "message": "the initial names have been accepted", "lastTransitionTime": t},
        ],
    }


# --------------------------------------------------------------------------
# The store and the verbs' semantics
# --------------------------------------------------------------------------


@dataclass
class Entry:
    obj: dict  # as served (resourceVersion, managedFields); replaced, never mutated
    owners: Owners
    orphan: bool = False  # deleted with propagationPolicy Orphan, waiting on finalizers


@dataclass
class WatchEvent:
    rv: int
    type: str  # ADDED, MODIFIED, DELETED
    rt: ResourceType
    obj: dict
    prev: Optional[dict]  # the object before, to turn label changes into ADDED/DELETED


class Cluster:
    """Objects keyed by (group, plural, namespace, name); one global
    resourceVersion, bumped by every write; an event log for watches. One
    lock guards it all; watchers wait on `changed`."""

    def __init__(self, max_events: int = 2000):
        self.lock = threading.RLock()
        self.changed = threading.Condition(self.lock)
        self.objects: dict[tuple, Entry] = {}
        self.rv = 0
        self.events: list[WatchEvent] = []
        self.max_events = max_events
        self.compacted_through = 0  # events with rv <= this are no longer in the log
        self.epoch = 0  # bumped by compact(): open watches end
        self.next_service_ip = 10  # 10.96.0.10 upward

    # -- reading ----------------------------------------------------------

    @staticmethod
    def key(rt: ResourceType, ns: str, name: str) -> tuple:
        return (rt.group, rt.plural, ns if rt.namespaced else "", name)

    def peek(self, rt: ResourceType, ns: str, name: str) -> Optional[dict]:
        with self.lock:
            e = self.objects.get(self.key(rt, ns, name))
            return e.obj if e else None

    def get(self, rt: ResourceType, ns: str, name: str) -> dict:
        obj = self.peek(rt, ns, name)
        if obj is None:
            raise not_found(rt, name)
        return obj

    def _entry(self, rt: ResourceType, ns: str, name: str) -> Entry:
        e = self.objects.get(self.key(rt, ns, name))
        if e is None:
            raise not_found(rt, name)
        return e

    @staticmethod
    def matcher(rt: ResourceType, ns: Optional[str], labels: str = "", fields: str = "") -> Callable[[dict], bool]:
        lpreds, fpreds = parse_label_selector(labels), parse_field_selector(rt, fields)

        def match(obj: dict) -> bool:
            if ns is not None and rt.namespaced and get_path(obj, ("metadata", "namespace")) != ns:
                return False
            return labels_match(lpreds, obj) and all(p(obj) for p in fpreds)

        return match

    def list(self, rt: ResourceType, ns: Optional[str], match: Optional[Callable] = None) -> tuple[list[dict], int]:
        """Objects of RT (in NS; None: all namespaces), sorted, with the rv."""
        with self.lock:
            items = [e.obj for k, e in self.objects.items()
                     if k[:2] == (rt.group, rt.plural) and (ns is None or not rt.namespaced or k[2] == ns)
                     and (match is None or match(e.obj))]
            return sorted(items, key=lambda o: (o["metadata"].get("namespace", ""), o["metadata"]["name"])), self.rv

    def all_objects(self) -> list[tuple[ResourceType, dict]]:
        with self.lock:
            by_key = {(rt.group, rt.plural): rt for rt in RESOURCES}
            return [(by_key[k[:2]], e.obj) for k, e in self.objects.items()]

    # -- writing: create --------------------------------------------------

    def create(self, rt: ResourceType, ns: str, body: Any, manager: str) -> dict:
        with self.lock:
            obj = self._new_object(rt, ns, body)
            obj = self._prepare(rt, None, obj)
            owners = record_update({}, manager, "", None, obj, rt.api_version)
            return self._commit(rt, None, obj, owners)

    def _new_object(self, rt: ResourceType, ns: str, body: Any) -> dict:
        """Identity and server-set metadata of an object being created."""
        if not isinstance(body, dict):
            raise bad_request("the body of the request was in an unknown format")
        self._check_type(rt, body)
        obj = drop_nulls(copy.deepcopy(body))
        m = meta(obj)
        if m.get("resourceVersion"):
            raise ApiError(500, "InternalError", "resourceVersion should not be set on objects to be created")
        if rt.namespaced:
            if m.get("namespace") and m["namespace"] != ns:
                raise bad_request("the namespace of the provided object does not match the namespace sent on the request")
            m["namespace"] = ns
        else:
            m.pop("namespace", None)
        name = m.get("name") or ""
        if not name and m.get("generateName"):
            name = self._generate_name(rt, ns, m["generateName"])
        if not name:
            raise invalid(rt, "", [Cause("metadata.name", "FieldValueRequired",
                                         "Required value: name or generateName is required")])
        m["name"] = name
        if self.key(rt, ns, name) in self.objects:
            raise already_exists(rt, name)
        self._check_namespace(rt, ns, name)
        for k in ("deletionTimestamp", "deletionGracePeriodSeconds", "managedFields", "selfLink"):
            m.pop(k, None)
        m["uid"] = str(uuid.uuid4())
        m["creationTimestamp"] = now_rfc3339()
        if rt.tracks_generation:
            m["generation"] = 1
        if rt.status_subresource:
            obj.pop("status", None)  # status is set through /status, never on create
        return obj

    def _generate_name(self, rt: ResourceType, ns: str, prefix: str) -> str:
        while True:
            name = prefix[:58] + random_suffix()
            if self.key(rt, ns, name) not in self.objects:
                return name

    def _check_namespace(self, rt: ResourceType, ns: str, name: str) -> None:
        """The NamespaceLifecycle admission plugin: no new objects in a missing
        or terminating namespace."""
        if not rt.namespaced:
            return
        nsobj = self.peek(NAMESPACES, "", ns)
        if nsobj is None:
            raise ApiError(404, "NotFound", f'namespaces "{ns}" not found', {"name": ns, "kind": "namespaces"})
        if get_path(nsobj, ("metadata", "deletionTimestamp")):
            raise ApiError(403, "Forbidden",
                           f'{rt.qualified} "{name}" is forbidden: unable to create new content in namespace {ns} '
                           "because it is being terminated", _details(rt, name))

    @staticmethod
    def _check_type(rt: ResourceType, body: dict) -> None:
        if body.get("apiVersion") and body["apiVersion"] != rt.api_version:
            raise bad_request(f"the API version in the data ({body['apiVersion']}) does not match the expected "
                              f"API version ({rt.api_version})")
        if body.get("kind") and body["kind"] != rt.kind:
            raise bad_request(f"the kind in the data ({body['kind']}) does not match the expected kind ({rt.kind})")

    # -- writing: updates -------------------------------------------------

    def update(self, rt: ResourceType, ns: str, name: str, sub: str, mutate: Callable[[dict], Any],
               manager: str) -> dict:
        """PUT and the non-apply patches: MUTATE gets a copy of the stored
        object and returns the new one. A metadata.resourceVersion in the
        result that is not the stored one is a 409 (optimistic concurrency;
        merge patches that carry one get it too)."""
        with self.lock:
            entry = self._entry(rt, ns, name)
            old = entry.obj
            candidate = mutate(copy.deepcopy(old))
            if not isinstance(candidate, dict):
                raise bad_request("the body of the request was in an unknown format")
            self._check_type(rt, candidate)
            self._check_identity(rt, ns, name, candidate)
            rv = get_path(candidate, ("metadata", "resourceVersion"))
            if rv and rv != old["metadata"]["resourceVersion"]:
                raise conflict(rt, name)
            new = self._prepare(rt, old, self._restrict(rt, sub, old, candidate))
            owners = record_update(entry.owners, manager, sub, old, new, rt.api_version)
            return self._commit(rt, entry, new, owners)

    def apply(self, rt: ResourceType, ns: str, name: str, sub: str, config: Any, manager: str,
              force: bool) -> tuple[dict, bool]:
        """Server-side apply; creates the object when absent. Returns the
        object and whether it was created."""
        if not isinstance(config, dict):
            raise bad_request("the body of the request was in an unknown format")
        if not config.get("apiVersion") or not config.get("kind"):
            raise bad_request("an applied configuration must set apiVersion and kind")
        self._check_type(rt, config)
        cname = get_path(config, ("metadata", "name"))
        if cname and cname != name:
            raise bad_request(f"the name of the object ({cname}) does not match the name on the URL ({name})")
        with self.lock:
            entry = self.objects.get(self.key(rt, ns, name))
            if entry is None:
                if sub:
                    raise not_found(rt, name)
                body = copy.deepcopy(config)
                meta(body)["name"] = name
                meta(body).pop("resourceVersion", None)
                obj = self._prepare(rt, None, self._new_object(rt, ns, body))
                owners = {(manager, "Apply", ""): Owned(set(scoped(field_paths(config), rt, "")), now_rfc3339(),
                                                        rt.api_version)}
                return self._commit(rt, None, obj, owners), True
            old = entry.obj
            rv = get_path(config, ("metadata", "resourceVersion"))
            if rv and rv != old["metadata"]["resourceVersion"]:
                raise conflict(rt, name)
            new, owners = server_side_apply(rt, name, sub, old, entry.owners, config, manager, force)
            new = self._prepare(rt, old, self._restrict(rt, sub, old, new))
            return self._commit(rt, entry, new, owners), False

    def _check_identity(self, rt: ResourceType, ns: str, name: str, obj: dict) -> None:
        m = obj.get("metadata") or {}
        if m.get("name") and m["name"] != name:
            raise bad_request(f"the name of the object ({m['name']}) does not match the name on the URL ({name})")
        if rt.namespaced and m.get("namespace") and m["namespace"] != ns:
            raise bad_request("the namespace of the provided object does not match the namespace sent on the request")

    @staticmethod
    def _restrict(rt: ResourceType, sub: str, old: dict, candidate: dict) -> dict:
        """A write to /status changes only .status; a write to the main
        resource of a type with a status subresource leaves .status alone."""
        if sub == "status":
            new = copy.deepcopy(old)
            if "status" in candidate:
                new["status"] = candidate["status"]
            else:
                new.pop("status", None)
            return new
        if rt.status_subresource:
            candidate = dict(candidate)
            if "status" in old:
                candidate["status"] = copy.deepcopy(old["status"])
            else:
                candidate.pop("status", None)
        return candidate

    def _prepare(self, rt: ResourceType, old: Optional[dict], new: dict) -> dict:
        """What every write does before storing: keep server-owned metadata,
        default, validate, bump the generation."""
        new = drop_nulls(new)
        new = {"apiVersion": rt.api_version, "kind": rt.kind,
               **{k: v for k, v in new.items() if k not in ("apiVersion", "kind")}}
        m = meta(new)
        for k in ("managedFields", "resourceVersion", "selfLink"):
            m.pop(k, None)
        if old is not None:
            om = old["metadata"]
            for k in ("name", "namespace", "uid", "creationTimestamp", "generation", "deletionTimestamp",
                      "deletionGracePeriodSeconds"):
                if k in om:
                    m[k] = om[k]
                else:
                    m.pop(k, None)
        for k in ("labels", "annotations", "finalizers", "ownerReferences"):
            if k in m and not m[k]:
                del m[k]  # omitempty
        causes = _name_causes(rt, m["name"]) if old is None else []
        causes += _label_causes(m.get("labels") or {})
        if old is not None and om.get("deletionTimestamp"):
            added = [f for f in m.get("finalizers") or [] if f not in (om.get("finalizers") or [])]
            if added:
                causes.append(Cause("metadata.finalizers", "FieldValueForbidden",
                                    "Forbidden: no new finalizers can be added if the object is being deleted, "
                                    f"found new finalizers []string{{{', '.join(json.dumps(a) for a in added)}}}"))
        causes += self._normalize(rt, old, new)
        if causes:
            raise invalid(rt, m["name"], causes)
        if rt.tracks_generation and old is not None:
            strip = lambda o: {k: v for k, v in o.items() if k not in ("metadata", "status")}  # noqa: E731
            if not json_equal(strip(old), strip(new)):
                m["generation"] = om.get("generation", 1) + 1
        return new

    def _normalize(self, rt: ResourceType, old: Optional[dict], obj: dict) -> list[Cause]:
        """Type-specific defaults and checks; returns validation causes."""
        if rt is SECRETS:
            normalize_secret(obj)
        elif rt is SERVICES:
            return self._normalize_service(old, obj)
        elif rt is DEPLOYMENTS:
            default_deployment(obj)
            return validate_deployment(obj, old)
        elif rt is PODS:
            default_pod_spec(obj.setdefault("spec", {}))
            if old is None:
                obj["status"] = {"phase": "Pending"}
            if not get_path(obj, ("spec", "containers")):
                return [Cause("spec.containers", "FieldValueRequired", "Required value")]
        elif rt is NAMESPACES:
            normalize_namespace(obj)
        elif rt is CRDS:
            normalize_crd(obj, old)
        elif rt is ENDPOINTSLICES and not obj.get("addressType"):
            return [Cause("addressType", "FieldValueRequired", "Required value")]
        elif rt.custom:
            CrdSchemas.prepare(self, rt, obj)
        return []

    def _normalize_service(self, old: Optional[dict], obj: dict) -> list[Cause]:
        spec = obj.setdefault("spec", {})
        spec.setdefault("type", "ClusterIP")
        spec.setdefault("sessionAffinity", "None")
        spec.setdefault("internalTrafficPolicy", "Cluster")
        old_ip = get_path(old, ("spec", "clusterIP"))
        if old is not None:
            if not spec.get("clusterIP"):  # an apply or PUT without it keeps it
                spec["clusterIP"] = old_ip
            elif spec["clusterIP"] != old_ip:
                return [Cause("spec.clusterIPs[0]", "FieldValueInvalid",
                              f"Invalid value: []string{{{json.dumps(spec['clusterIP'])}}}: may not change once set")]
        elif not spec.get("clusterIP"):
            spec["clusterIP"] = f"10.96.{self.next_service_ip // 256}.{self.next_service_ip % 256}"
            self.next_service_ip += 1
        spec["clusterIPs"] = [spec["clusterIP"]]
        spec.setdefault("ipFamilies", ["IPv4"])
        spec.setdefault("ipFamilyPolicy", "SingleStack")
        for p in spec.get("ports") or []:
            p.setdefault("protocol", "TCP")
            p.setdefault("targetPort", p.get("port"))
        obj.setdefault("status", {"loadBalancer": {}})
        return []

    # -- writing: commit, delete, garbage -----------------------------------

    @staticmethod
    def _comparable(obj: dict) -> dict:
        m = {k: v for k, v in obj["metadata"].items() if k not in ("resourceVersion", "managedFields")}
        return dict(obj, metadata=m)

    def _commit(self, rt: ResourceType, entry: Optional[Entry], new: dict, owners: Owners) -> dict:
        """Store NEW: bump the rv and log an event, unless nothing changed (a
        no-op write keeps its rv and emits nothing, as the real server)."""
        old = entry.obj if entry else None
        if old is not None and json_equal(self._comparable(old), self._comparable(new)) \
                and owners_equal(entry.owners, owners):
            return old
        self.rv += 1
        m = new["metadata"]
        m["resourceVersion"] = str(self.rv)
        m["managedFields"] = render_managed_fields(owners)
        if not m["managedFields"]:
            del m["managedFields"]
        key = self.key(rt, m.get("namespace", ""), m["name"])
        stored = Entry(new, owners, entry.orphan if entry else False)
        self.objects[key] = stored
        self._log("MODIFIED" if old is not None else "ADDED", rt, new, old)
        if m.get("deletionTimestamp") and not m.get("finalizers") and not self._graceful(rt, new):
            return self._remove(rt, stored)  # the last finalizer went
        return new

    @staticmethod
    def _graceful(rt: ResourceType, obj: dict) -> bool:
        """Objects whose deletion waits on a controller rather than on
        metadata.finalizers: a pod stays until its kubelet has stopped it (it
        deletes it again with grace 0); a namespace until it is empty."""
        if rt is NAMESPACES:
            return True
        return rt is PODS and bool(get_path(obj, ("spec", "nodeName"))) and \
            get_path(obj, ("metadata", "deletionGracePeriodSeconds"), 0) > 0

    def _remove(self, rt: ResourceType, entry: Entry) -> dict:
        self.rv += 1
        obj = copy.deepcopy(entry.obj)
        obj["metadata"]["resourceVersion"] = str(self.rv)
        m = obj["metadata"]
        del self.objects[self.key(rt, m.get("namespace", ""), m["name"])]
        self._log("DELETED", rt, obj, entry.obj)
        if entry.orphan:
            self._orphan_dependents(m["uid"])
        return obj

    def delete(self, rt: ResourceType, ns: str, name: str, opts: dict) -> tuple[dict, bool]:
        """DELETE: returns the object and whether it is gone already (else it
        has a deletionTimestamp and waits on finalizers, or is a pod waiting
        on its kubelet)."""
        with self.lock:
            entry = self._entry(rt, ns, name)
            old, om = entry.obj, entry.obj["metadata"]
            self._check_preconditions(rt, name, om, opts.get("preconditions") or {})
            policy = opts.get("propagationPolicy") or ("Orphan" if opts.get("orphanDependents") else "Background")
            grace = opts.get("gracePeriodSeconds")
            if om.get("deletionTimestamp"):
                if rt is PODS and grace == 0:  # a forced deletion of a terminating pod
                    return self._remove(rt, entry), True
                return old, False
            pod_grace = self._pod_grace(rt, old, grace)
            if om.get("finalizers") or pod_grace or rt is NAMESPACES:
                new = copy.deepcopy(old)
                nm = new["metadata"]
                nm["deletionTimestamp"] = now_rfc3339()
                nm["deletionGracePeriodSeconds"] = pod_grace or 0
                if rt.tracks_generation:
                    nm["generation"] = nm.get("generation", 1) + 1
                if rt is NAMESPACES:
                    normalize_namespace(new)
                entry.orphan = policy == "Orphan"
                return self._commit(rt, entry, new, entry.owners), False
            if policy == "Orphan":
                self._orphan_dependents(om["uid"])
            return self._remove(rt, entry), True

    @staticmethod
    def _pod_grace(rt: ResourceType, pod: dict, grace: Optional[int]) -> int:
        """A scheduled, unfinished pod is deleted gracefully: its kubelet
        stops it first. 0: delete at once."""
        if rt is not PODS or not get_path(pod, ("spec", "nodeName")):
            return 0
        if get_path(pod, ("status", "phase")) in ("Succeeded", "Failed"):
            return 0
        if grace is None:
            grace = get_path(pod, ("spec", "terminationGracePeriodSeconds"), 30)
        return max(int(grace), 0)

    @staticmethod
    def _check_preconditions(rt: ResourceType, name: str, om: dict, pre: dict) -> None:
        for field_name, label in (("uid", "UID"), ("resourceVersion", "ResourceVersion")):
            if pre.get(field_name) and pre[field_name] != om.get(field_name):
                raise ApiError(409, "Conflict",
                               f"Operation cannot be fulfilled on {rt.qualified} \"{name}\": Precondition failed: "
                               f"{label} in precondition: {pre[field_name]}, {label} in object meta: {om.get(field_name)}",
                               _details(rt, name))

    def _orphan_dependents(self, uid: str) -> None:
        """propagationPolicy Orphan: dependents lose their reference and stay."""
        for rt, obj in self.all_objects():
            refs = get_path(obj, ("metadata", "ownerReferences")) or []
            if any(r.get("uid") == uid for r in refs):
                m = obj["metadata"]
                self.update(rt, m.get("namespace", ""), m["name"], "",
                            lambda o: self._without_owner(o, {uid}), "generic-garbage-collector")

    @staticmethod
    def _without_owner(obj: dict, uids: set) -> dict:
        m = meta(obj)
        m["ownerReferences"] = [r for r in m.get("ownerReferences") or [] if r.get("uid") not in uids]
        return obj

    def collect_garbage(self) -> None:
        """The garbage collector: an object all of whose owners are gone is
        deleted (in the background, respecting its finalizers); one with some
        owners left loses the references to the gone ones."""
        with self.lock:
            live = {e.obj["metadata"]["uid"] for e in self.objects.values()}
            for rt, obj in self.all_objects():
                m = obj["metadata"]
                refs = m.get("ownerReferences") or []
                dead = {r.get("uid") for r in refs if r.get("uid") not in live}
                if not dead or self.peek(rt, m.get("namespace", ""), m["name"]) is not obj:
                    continue
                try:
                    if len(dead) == len({r.get("uid") for r in refs}):
                        if not m.get("deletionTimestamp"):
                            log(f"gc: deleting {rt.qualified} {m.get('namespace', '')}/{m['name']}")
                            self.delete(rt, m.get("namespace", ""), m["name"], {"propagationPolicy": "Background"})
                    else:
                        self.update(rt, m.get("namespace", ""), m["name"], "",
                                    lambda o, d=dead: self._without_owner(o, d), "generic-garbage-collector")
                except ApiError as e:
                    log(f"gc: {e.message}")

    def finish_namespaces(self) -> None:
        """The namespace controller: a terminating namespace's objects are
        deleted; it goes once it is empty."""
        with self.lock:
            for ns in self.list(NAMESPACES, None)[0]:
                name = ns["metadata"]["name"]
                if not ns["metadata"].get("deletionTimestamp"):
                    continue
                inside = [(rt, o) for rt, o in self.all_objects()
                          if rt.namespaced and o["metadata"].get("namespace") == name]
                for rt, o in inside:
                    if not o["metadata"].get("deletionTimestamp"):
                        self.delete(rt, name, o["metadata"]["name"], {})
                if not inside:
                    self._remove(NAMESPACES, self.objects[self.key(NAMESPACES, "", name)])

    # -- the event log ----------------------------------------------------

    def _log(self, type_: str, rt: ResourceType, obj: dict, prev: Optional[dict]) -> None:
        self.events.append(WatchEvent(self.rv, type_, rt, obj, prev))
        if len(self.events) > self.max_events + 100:  # trim in batches
            drop = len(self.events) - self.max_events
            self.compacted_through = self.events[drop - 1].rv
            del self.events[:drop]
        self.changed.notify_all()

    def events_after(self, rv: int) -> list[WatchEvent]:
        """Logged events with resourceVersion > RV (call with the lock held)."""
        return self.events[bisect.bisect_right(self.events, rv, key=lambda e: e.rv):]

    def too_old(self, rv: int) -> bool:
        return rv < self.compacted_through

    def compact(self) -> None:
        """Drop the event log (as etcd compaction does) and end every open
        watch. The rv moves on first, as if other writes had happened (on a
        real cluster leases and events move it all the time), so that every
        watcher, even one a bookmark has just brought up to date, gets 410
        Expired when it resumes and must re-list."""
        with self.lock:
            self.rv += 1
            self.compacted_through = self.rv
            self.events.clear()
            self.epoch += 1
            self.changed.notify_all()


# --------------------------------------------------------------------------
# Views: the scale subresource, discovery documents
# --------------------------------------------------------------------------


def scale_view(dep: dict) -> dict:
    m = dep["metadata"]
    return {
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {k: m[k] for k in ("name", "namespace", "uid", "resourceVersion", "creationTimestamp") if k in m},
        "spec": {"replicas": get_path(dep, ("spec", "replicas"), 0)},
        "status": {"replicas": get_path(dep, ("status", "replicas"), 0),
                   "selector": selector_string(get_path(dep, ("spec", "selector")) or {})},
    }


def _verbs(rt: ResourceType) -> list[str]:
    verbs = ["create", "delete", "get", "list", "patch", "update", "watch"]
    return verbs if rt is NAMESPACES else sorted(verbs + ["deletecollection"])


def api_resource_list(group: str, version: str) -> Optional[dict]:
    resources = []
    for rt in RESOURCES:
        if (rt.group, rt.version) != (group, version):
            continue
        resources.append({"name": rt.plural, "singularName": rt.singular, "namespaced": rt.namespaced,
                          "kind": rt.kind, "verbs": _verbs(rt), "shortNames": list(rt.short_names)})
        if rt.status_subresource:
            resources.append({"name": f"{rt.plural}/status", "singularName": "", "namespaced": rt.namespaced,
                              "kind": rt.kind, "verbs": ["get", "patch", "update"]})
        if rt.scale_subresource:
            resources.append({"name": f"{rt.plural}/scale", "singularName": "", "namespaced": rt.namespaced,
                              "group": "autoscaling", "version": "v1", "kind": "Scale",
                              "verbs": ["get", "patch", "update"]})
    if not resources:
        return None
    gv = f"{group}/{version}" if group else version
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}


def api_group(group: str) -> Optional[dict]:
    versions = sorted({rt.version for rt in RESOURCES if rt.group == group})
    if not group or not versions:
        return None
    gvs = [{"groupVersion": f"{group}/{v}", "version": v} for v in versions]
    return {"kind": "APIGroup", "apiVersion": "v1", "name": group, "versions": gvs, "preferredVersion": gvs[0]}


def api_group_list() -> dict:
    groups = [api_group(g) for g in sorted({rt.group for rt in RESOURCES if rt.group})]
    return {"kind": "APIGroupList", "apiVersion": "v1",
            "groups": [{k: v for k, v in g.items() if k not in ("kind", "apiVersion")} for g in groups]}


VERSION_INFO = {"major": "1", "minor": "36", "emulationMajor": "1", "emulationMinor": "36",
                "minCompatibilityMajor": "1", "minCompatibilityMinor": "35", "gitVersion": "v1.36.0",
                "gitCommit": "0000000000000000000000000000000000000000", "gitTreeState": "clean",
                "buildDate": "2026-01-01T00:00:00Z", "goVersion": "go1.25.0", "compiler": "gc",
                "platform": "linux/amd64"}

JSON_PATCH = "application/json-patch+json"
MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_PATCH = "application/strategic-merge-patch+json"
APPLY_PATCH = "application/apply-patch+yaml"


def patched(rt: ResourceType, ctype: str, current: dict, patch: Any) -> dict:
    """CURRENT with a non-apply PATCH body of content type CTYPE applied."""
    if ctype == MERGE_PATCH:
        return merge_patch(current, patch)
    if ctype == STRATEGIC_PATCH:
        if rt.custom:
            raise ApiError(415, "UnsupportedMediaType",
                           f"strategic merge patch is not supported for {rt.api_version}, Kind={rt.kind}")
        return strategic_merge_patch(current, patch)
    if ctype == JSON_PATCH:
        try:
            return json_patch(current, patch)
        except PatchFailed as e:
            # NewGenericServerResponse(422): a generic message, the detail in causes.
            raise ApiError(422, "Invalid", "the server rejected our request due to an error in our request",
                           {"causes": [{"reason": "UnexpectedServerResponse", "message": str(e)}]})
    raise ApiError(415, "UnsupportedMediaType",
                   f"the body of the request was in an unknown format - accepted media types include: "
                   f"{JSON_PATCH}, {MERGE_PATCH}, {APPLY_PATCH}" + ("" if rt.custom else f", {STRATEGIC_PATCH}"))


# --------------------------------------------------------------------------
# HTTP
# --------------------------------------------------------------------------

WATCH_CAP_SECONDS = 300.0


@dataclass
class Route:
    rt: ResourceType
    ns: Optional[str]  # None: all namespaces (or a cluster-scoped resource)
    name: Optional[str]
    sub: str  # "", "status" or "scale"


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "wasmscore-sim-apiserver/1"
    # Headers and body go out in separate writes: without TCP_NODELAY,
    # Nagle's algorithm holds the body until the client's delayed ACK
    # (about 40 ms per response on a kept-alive connection).
    disable_nagle_algorithm = True
    sim: "Sim"  # set by main()

    # -- plumbing ---------------------------------------------------------

    def log_message(self, fmt: str, *args: Any) -> None:
        log(f"http: {fmt % args}", 2)

    def log_request(self, code: Any = "-", size: Any = "-") -> None:
        log(f"{self.command} {self.path} {int(code) if str(code).isdigit() else code}")
        self.write_audit(int(code) if str(code).isdigit() else 0)

    def write_audit(self, code: int) -> None:
        """The request's audit event (level Metadata), as the real server's
        audit log has it: who, the verb RBAC authorized it as, the object,
        the status. A server-side apply that made the object answers 201:
        the real server authorizes it as create too."""
        route, self.audit_route = getattr(self, "audit_route", None), None
        if self.sim.audit_log is None or route is None:
            return
        r, verb = route
        auth = self.headers.get("Authorization") or ""
        ref = {"resource": r.rt.plural, "apiGroup": r.rt.group, "apiVersion": r.rt.version}
        if r.ns:
            ref["namespace"] = r.ns
        if r.name:
            ref["name"] = r.name
        if r.sub:
            ref["subresource"] = r.sub
        event = {"kind": "Event", "apiVersion": "audit.k8s.io/v1", "level": "Metadata", "stage": "ResponseComplete",
                 "requestURI": self.path, "verb": verb,
                 "user": {"username": auth[len("Bearer "):] if auth.startswith("Bearer ") else "system:anonymous"},
                 "objectRef": ref, "responseStatus": {"code": code}}
        with self.sim.audit_lock:
            self.sim.audit_log.write(json.dumps(event) + "\n")

    def do_GET(self) -> None:
        self.dispatch()

    do_POST = do_PUT = do_PATCH = do_DELETE = do_GET

    def dispatch(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        self.query = {k: v[-1] for k, v in urllib.parse.parse_qs(url.query, keep_blank_values=True).items()}
        try:
            body = self.read_body()
            self.route(url.path, body)
        except ApiError as e:
            self.send_json(e.code, e.status())
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception as e:  # a bug here: say so, as a 500 Status
            traceback.print_exc()
            self.send_json(500, ApiError(500, "InternalError", f"Internal error occurred: {e}").status())

    def read_body(self) -> bytes:
        """Always consume the body, or the next request on this keep-alive
        connection would be read from the middle of it."""
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return out
                out += self.rfile.read(size)
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def send_json(self, code: int, obj: Any) -> None:
        data = dumps(obj)
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def json_body(self, body: bytes) -> Any:
        try:
            return json.loads(body or b"null")
        except ValueError as e:
            raise bad_request(f"the body of the request was in an unknown format: {e}")

    def manager(self, required: bool = False) -> str:
        """The field manager: ?fieldManager=, else the User-Agent's product,
        as the real server derives it (empty when there is none: kube-rs
        sends no User-Agent)."""
        name = self.query.get("fieldManager")
        if required and not name:
            raise bad_request("PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: "
                              "is required for apply patch")
        if name and len(name) > 128:
            raise bad_request("fieldManager: Too long: may not be more than 128 bytes")
        return name or (self.headers.get("User-Agent") or "").split("/")[0]

    # -- routing ----------------------------------------------------------

    def route(self, path: str, body: bytes) -> None:
        special = self.special(path)
        if special is not None:
            return special()
        parts = [urllib.parse.unquote(p) for p in path.split("/") if p]
        if parts[:1] == ["api"] and len(parts) >= 2:
            group, version, rest = "", parts[1], parts[2:]
        elif parts[:1] == ["apis"] and len(parts) >= 3:
            group, version, rest = parts[1], parts[2], parts[3:]
        elif parts[:1] == ["apis"] and len(parts) == 2 and api_group(parts[1]):
            return self.send_json(200, api_group(parts[1]))
        else:
            raise ApiError(404, "NotFound", "the server could not find the requested resource", {})
        if not rest:
            doc = api_resource_list(group, version)
            if doc is None:
                raise ApiError(404, "NotFound", "the server could not find the requested resource", {})
            return self.send_json(200, doc)
        self.serve(self.parse_route(group, version, rest), body)

    def special(self, path: str) -> Optional[Callable[[], None]]:
        sim = self.sim
        table: dict[tuple[str, str], Callable[[], None]] = {
            ("GET", "/version"): lambda: self.send_json(200, VERSION_INFO),
            ("GET", "/api"): lambda: self.send_json(200, {
                "kind": "APIVersions", "versions": ["v1"],
                "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0",
                                                "serverAddress": f"127.0.0.1:{sim.port}"}]}),
            ("GET", "/apis"): lambda: self.send_json(200, api_group_list()),
            ("GET", "/sim/pods"): lambda: self.send_json(200, sim.controllers.pods_report()),
            ("POST", "/sim/compact"): self.compact,
        }
        for probe in ("/healthz", "/livez", "/readyz"):
            table[("GET", probe)] = self.ok_text
        return table.get((self.command, path.rstrip("/") or "/"))

    def ok_text(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def compact(self) -> None:
        self.sim.cluster.compact()
        self.send_json(200, {"compactedThrough": self.sim.cluster.compacted_through})

    @staticmethod
    def parse_route(group: str, version: str, rest: list[str]) -> Route:
        missing = ApiError(404, "NotFound", "the server could not find the requested resource", {})
        ns = None
        if rest[0] == "namespaces" and len(rest) >= 3 and rest[2] not in ("status", "finalize"):
            ns, rest = rest[1], rest[2:]
        if len(rest) > 3:
            raise missing
        rt = BY_GVR.get((group, version, rest[0]))
        if rt is None:
            raise missing
        name = rest[1] if len(rest) > 1 else None
        sub = rest[2] if len(rest) > 2 else ""
        if (ns is not None and not rt.namespaced) or (rt.namespaced and ns is None and name is not None):
            raise missing
        if sub and not ((sub == "status" and rt.status_subresource) or (sub == "scale" and rt.scale_subresource)):
            raise missing
        return Route(rt, ns if rt.namespaced else "", name, sub)

    # -- verbs ------------------------------------------------------------

    def serve(self, r: Route, body: bytes) -> None:
        method = self.command
        watching = self.query.get("watch") in ("true", "1")
        verbs = {"GET": "watch" if watching else "list", "POST": "create", "DELETE": "deletecollection"} \
            if r.name is None else {"GET": "get", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}
        self.audit_route = (r, verbs.get(method, method.lower()))
        if "dryRun" in self.query:
            raise bad_request("dryRun is not supported by the simulated API server")
        if r.name is None:
            if method == "GET":
                return self.watch(r) if self.query.get("watch") in ("true", "1") else self.list(r)
            if method == "POST" and (r.ns is not None):
                obj = self.sim.cluster.create(r.rt, r.ns, self.json_body(body), self.manager())
                return self.send_json(201, obj)
            if method == "DELETE" and r.ns is not None:
                return self.delete_collection(r, body)
        else:
            if method == "GET":
                obj = self.sim.cluster.get(r.rt, r.ns, r.name)
                return self.send_json(200, scale_view(obj) if r.sub == "scale" else obj)
            if method == "PUT":
                return self.replace(r, self.json_body(body))
            if method == "PATCH":
                return self.patch(r, body)
            if method == "DELETE" and not r.sub:
                return self.delete(r, body)
        raise ApiError(405, "MethodNotAllowed",
                       f"the server does not allow this method on the requested resource", {})

    def list(self, r: Route) -> None:
        cluster = self.sim.cluster
        match = cluster.matcher(r.rt, r.ns, self.query.get("labelSelector", ""), self.query.get("fieldSelector", ""))
        items, rv = cluster.list(r.rt, r.ns, match)
        self.send_json(200, {"kind": f"{r.rt.kind}List", "apiVersion": r.rt.api_version,
                             "metadata": {"resourceVersion": str(rv)}, "items": items})

    def replace(self, r: Route, body: Any) -> None:
        cluster, manager = self.sim.cluster, self.manager()
        if not isinstance(body, dict):
            raise bad_request("the body of the request was in an unknown format")
        if r.sub == "scale":
            return self.send_json(200, scale_view(self.write_scale(r, body, manager)))
        obj = cluster.update(r.rt, r.ns, r.name, r.sub, lambda _old: body, manager)
        self.send_json(200, obj)

    def patch(self, r: Route, raw: bytes) -> None:
        cluster = self.sim.cluster
        ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip()
        patch = self.json_body(raw)  # YAML apply bodies from kube-rs are JSON
        force = self.query.get("force") in ("true", "1")
        if ctype == APPLY_PATCH:
            manager = self.manager(required=True)
            if r.sub == "scale":
                return self.send_json(200, scale_view(self.apply_scale(r, patch, manager, force)))
            obj, created = cluster.apply(r.rt, r.ns, r.name, r.sub, patch, manager, force)
            return self.send_json(201 if created else 200, obj)
        if force:
            raise bad_request("force: Forbidden: may not be specified for non-apply patch")
        manager = self.manager()
        if r.sub == "scale":
            with cluster.lock:
                view = scale_view(cluster.get(r.rt, r.ns, r.name))
                dep = self.write_scale(r, patched(r.rt, ctype, view, patch), manager)
            return self.send_json(200, scale_view(dep))
        obj = cluster.update(r.rt, r.ns, r.name, r.sub, lambda cur: patched(r.rt, ctype, cur, patch), manager)
        self.send_json(200, obj)

    def write_scale(self, r: Route, scale: dict, manager: str) -> dict:
        """PUT/PATCH of a Scale: only spec.replicas lands on the Deployment;
        a stale metadata.resourceVersion is a 409."""
        if scale.get("kind") not in (None, "Scale"):
            raise bad_request(f"the kind in the data ({scale['kind']}) does not match the expected kind (Scale)")
        replicas = get_path(scale, ("spec", "replicas"), 0)
        if not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 0:
            raise invalid(r.rt, r.name, [Cause("spec.replicas", "FieldValueInvalid",
                                               f"Invalid value: {_go_value(replicas)}: must be greater than or equal to 0")])
        rv = get_path(scale, ("metadata", "resourceVersion"))

        def mutate(dep: dict) -> dict:
            dep["spec"]["replicas"] = replicas
            if rv:
                dep["metadata"]["resourceVersion"] = rv
            return dep

        return self.sim.cluster.update(r.rt, r.ns, r.name, "scale", mutate, manager)

    def apply_scale(self, r: Route, config: Any, manager: str, force: bool) -> dict:
        """Apply to /scale: the manager owns the Deployment's .spec.replicas."""
        if not isinstance(config, dict) or config.get("kind") != "Scale" or config.get("apiVersion") != "autoscaling/v1":
            raise bad_request("an applied Scale needs apiVersion autoscaling/v1 and kind Scale")
        dep_config = {"apiVersion": r.rt.api_version, "kind": r.rt.kind, "metadata": {"name": r.name}}
        if get_path(config, ("spec", "replicas")) is not None:
            dep_config["spec"] = {"replicas": config["spec"]["replicas"]}
        rv = get_path(config, ("metadata", "resourceVersion"))
        if rv:
            dep_config["metadata"]["resourceVersion"] = rv
        obj, _ = self.sim.cluster.apply(r.rt, r.ns, r.name, "scale", dep_config, manager, force)
        return obj

    def delete_options(self, body: bytes) -> dict:
        opts = self.json_body(body) if body.strip() else {}
        opts = dict(opts or {})
        for k in ("propagationPolicy", "gracePeriodSeconds", "orphanDependents"):
            if k in self.query:
                v = self.query[k]
                opts[k] = int(v) if k == "gracePeriodSeconds" else (v == "true" if k == "orphanDependents" else v)
        return opts

    def delete(self, r: Route, body: bytes) -> None:
        obj, gone = self.sim.cluster.delete(r.rt, r.ns, r.name, self.delete_options(body))
        if gone and not r.rt.returns_deleted_object:
            m = obj["metadata"]
            status = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                      "details": _details(r.rt, m["name"], uid=m["uid"])}
            return self.send_json(200, status)
        self.send_json(200, obj)

    def delete_collection(self, r: Route, body: bytes) -> None:
        cluster, opts = self.sim.cluster, self.delete_options(body)
        match = cluster.matcher(r.rt, r.ns, self.query.get("labelSelector", ""), self.query.get("fieldSelector", ""))
        with cluster.lock:
            items, _ = cluster.list(r.rt, r.ns, match)
            deleted = [cluster.delete(r.rt, o["metadata"].get("namespace", ""), o["metadata"]["name"], opts)[0]
                       for o in items]
            rv = cluster.rv
        self.send_json(200, {"kind": f"{r.rt.kind}List", "apiVersion": r.rt.api_version,
                             "metadata": {"resourceVersion": str(rv)}, "items": deleted})

    # -- watch ------------------------------------------------------------

    def watch(self, r: Route) -> None:
        """A chunked stream of newline-delimited watch events (see the
        module docstring for the rules)."""
        cluster, q = self.sim.cluster, self.query
        match = cluster.matcher(r.rt, r.ns, q.get("labelSelector", ""), q.get("fieldSelector", ""))
        timeout = min(float(q.get("timeoutSeconds") or WATCH_CAP_SECONDS), WATCH_CAP_SECONDS)
        bookmarks = q.get("allowWatchBookmarks") in ("true", "1")
        initial_events = q.get("sendInitialEvents") == "true"
        rv_param = q.get("resourceVersion", "")
        if rv_param not in ("", "0") and not rv_param.isdigit():
            raise ApiError(400, "BadRequest", f"invalid resource version: {rv_param}")
        with cluster.lock:
            epoch = cluster.epoch
            if rv_param in ("", "0") or initial_events:
                initial, cursor = cluster.list(r.rt, r.ns, match)
                expired = False
            else:
                initial, cursor = [], int(rv_param)
                expired = cluster.too_old(cursor)
        self.start_stream()
        try:
            if expired:
                self.send_expired(cursor)
            else:
                for obj in initial:
                    self.send_event("ADDED", obj)
                if initial_events and bookmarks:
                    self.send_bookmark(r.rt, cursor, initial_events_end=True)
                self.follow(r, match, cursor, epoch, time.monotonic() + timeout, bookmarks)
        except (BrokenPipeError, ConnectionResetError, OSError):
            self.close_connection = True
            return
        self.end_stream()

    def follow(self, r: Route, match: Callable, cursor: int, epoch: int, deadline: float, bookmarks: bool) -> None:
        cluster, interval = self.sim.cluster, self.sim.bookmark_interval
        next_bookmark = time.monotonic() + interval
        while True:
            with cluster.lock:
                while cluster.rv <= cursor and cluster.epoch == epoch:
                    wait = min(deadline, next_bookmark if bookmarks else deadline, time.monotonic() + 1.0)
                    wait -= time.monotonic()
                    if wait <= 0:
                        break
                    cluster.changed.wait(wait)
                if cluster.epoch != epoch:
                    return  # compacted: the client re-watches (and gets 410)
                if cluster.too_old(cursor):  # the log was trimmed past us
                    self.send_expired(cursor)
                    return
                events, cursor = cluster.events_after(cursor), cluster.rv
            for ev in events:
                if ev.rt is r.rt:
                    seen = watch_view(ev, match)
                    if seen:
                        self.send_event(*seen)
            now = time.monotonic()
            if now >= deadline:
                return
            if bookmarks and now >= next_bookmark:
                self.send_bookmark(r.rt, cursor)
                next_bookmark = now + interval
            if self.client_gone():
                raise BrokenPipeError("watch client went away")

    def start_stream(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

    def send_chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def end_stream(self) -> None:
        try:
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except OSError:
            self.close_connection = True

    def send_event(self, type_: str, obj: dict) -> None:
        self.send_chunk(dumps({"type": type_, "object": obj}) + b"\n")

    def send_bookmark(self, rt: ResourceType, rv: int, initial_events_end: bool = False) -> None:
        m: dict = {"resourceVersion": str(rv)}
        if initial_events_end:
            m["annotations"] = {"k8s.io/initial-events-end": "true"}
        self.send_event("BOOKMARK", {"kind": rt.kind, "apiVersion": rt.api_version, "metadata": m})

    def send_expired(self, rv: int) -> None:
        oldest = self.sim.cluster.compacted_through
        status = ApiError(410, "Expired", f"too old resource version: {rv} ({oldest})").status()
        self.send_event("ERROR", status)

    def client_gone(self) -> bool:
        """A closed connection reads as EOF (the client sends nothing else
        while it watches)."""
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            return bool(readable) and self.connection.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True


def watch_view(ev: WatchEvent, match: Callable[[dict], bool]) -> Optional[tuple[str, dict]]:
    """What a filtered watch sees of EV: as the real watch cache, an object
    that starts (stops) matching the selectors is ADDED (DELETED)."""
    now = match(ev.obj)
    before = ev.prev is not None and match(ev.prev)
    if ev.type == "ADDED":
        return ("ADDED", ev.obj) if now else None
    if ev.type == "DELETED":
        return ("DELETED", ev.obj) if now or before else None
    if now and before:
        return ("MODIFIED", ev.obj)
    if now:
        return ("ADDED", ev.obj)
    if before:
        return ("DELETED", ev.obj)
    return None


# --------------------------------------------------------------------------
# The stand-in kubelet: one PodWorker (and thread) per running pod
# --------------------------------------------------------------------------

BACKOFF_CAP_SECONDS = 10.0  # real kubelet: 10 s doubling to 5 min
PROBE_TIMEOUT_SECONDS = 1.0  # real: the probe's timeoutSeconds
LOG_TAIL_LINES = 10  # real FallbackToLogsOnError: 80 lines or 2 KiB


def _signal_group(proc: Optional[subprocess.Popen], sig: int) -> None:
    """Signal the pod's process group (the process is a session leader, so
    whatever it spawned goes with it, as in a container)."""
    if proc is None or proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


# util-linux's setpriv, when present, arms PR_SET_PDEATHSIG for a pod's
# process: it gets SIGKILL if the simulator dies, even by SIGKILL, instead of
# living on as an orphan holding its IP and port. (The signal fires when the
# *thread* that started the process ends: the pod's worker thread, which
# outlives its processes.)
SETPRIV = shutil.which("setpriv")


def _orphan_guard(argv: list[str]) -> list[str]:
    return [SETPRIV, "--pdeathsig", "KILL", "--", *argv] if SETPRIV else argv


def _log_tail(path: str) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 16384))
            lines = f.read().decode(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(lines[-LOG_TAIL_LINES:])[-2048:]


def _is_local_registry(artifact: str) -> bool:
    host = artifact.split("/", 1)[0].rsplit(":", 1)[0] if "/" in artifact else ""
    return host in ("localhost", "127.0.0.1", "[::1]") or host.startswith("127.")


class PodIPs:
    """Pod IPs: 127.0.0.N, N from 2 upward (Linux routes all of 127/8 to
    loopback, so every pod can listen on the same containerPort).

    Several simulators may run at once on one machine (parallel tests): a
    pod holds its IP's lock file (flock) in a directory every simulator
    shares, so no two hand out the same IP, and the lock goes with the
    process if a simulator dies. An IP where one of the pod's ports is
    already bound (by anything, e.g. an orphan of a killed simulator) is
    skipped too."""

    LOCK_DIR = os.path.join(tempfile.gettempdir(), "kube-sim-pod-ips")

    def __init__(self) -> None:
        os.makedirs(self.LOCK_DIR, exist_ok=True)
        self.held: dict[str, int] = {}  # ip -> locked fd

    def allocate(self, ports: list[int]) -> str:
        for n in range(2, 65024):
            if n % 256 in (0, 255):
                continue
            ip = f"127.0.{n // 256}.{n % 256}"
            if ip in self.held:
                continue
            fd = os.open(os.path.join(self.LOCK_DIR, ip), os.O_CREAT | os.O_RDWR, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                continue
            if all(self._free(ip, port) for port in ports):
                self.held[ip] = fd
                return ip
            os.close(fd)
        raise RuntimeError("no free pod IP left in 127.0.0.0/16")

    def release(self, ip: str) -> None:
        fd = self.held.pop(ip, None)
        if fd is not None:
            os.close(fd)  # unlocks

    @staticmethod
    def _free(ip: str, port: int) -> bool:
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT does not count
            try:
                s.bind((ip, port))
                return True
            except OSError:
                return False


class PodWorker:
    """A pod's first container as a real child process: start, readiness and
    liveness probes, restarts with backoff, graceful termination. Its own
    thread drives it; `pod_status()` reads it for the Pod object."""

    def __init__(self, sim: "Sim", pod: dict, ip: str):
        m, spec = pod["metadata"], pod["spec"]
        self.sim, self.ip = sim, ip
        self.name, self.namespace, self.uid = m["name"], m["namespace"], m["uid"]
        self.owner = next((r.get("name") for r in m.get("ownerReferences") or [] if r.get("controller")), "")
        self.spec = spec
        self.container = spec["containers"][0]
        self.dir = os.path.join(sim.state_dir, "pods", self.name)
        self.log_path = os.path.join(self.dir, "log")
        self.lock = threading.RLock()
        self.start_time = now_rfc3339()
        # The process.
        self.proc: Optional[subprocess.Popen] = None
        self.started_at: Optional[str] = None
        self.started_mono = 0.0
        # Wall-clock seconds of the process's start and of its first passed
        # readiness after it (for benchmarks: start -> ready).
        self.started_wall = 0.0
        self.ready_wall = 0.0
        self.restarts = 0
        self.crashes_in_row = 0
        self.next_start = 0.0
        self.waiting: Optional[tuple[str, str]] = ("ContainerCreating", "")
        self.last_terminated: Optional[dict] = None
        self.finished: Optional[dict] = None  # restartPolicy Never/OnFailure: done for good
        # Probes.
        self.ready = False
        self.ready_ok = self.ready_fail = self.live_fail = 0
        self.next_ready_probe = self.next_live_probe = 0.0
        self.kill_deadline: Optional[float] = None  # a liveness kill in progress
        # Termination.
        self.terminating = False
        self.term_deadline = self.prestop_until = 0.0
        self.prestop_http: Optional[dict] = None
        self.sigterm_sent = False
        self.done = False
        self.mounts = self._prepare_volumes()
        self.thread = threading.Thread(target=self.run, name=f"pod {self.name}", daemon=True)

    # -- the pod's filesystem and command line ------------------------------

    def _prepare_volumes(self) -> list[tuple[str, str]]:
        """(mountPath, host path) per volumeMount: emptyDir is a fresh
        directory of this pod's; hostPath is the path itself; configMap and
        secret volumes are written out once, at start."""
        volumes = {v.get("name"): v for v in self.spec.get("volumes") or []}
        mounts = []
        for vm in self.container.get("volumeMounts") or []:
            vol = volumes.get(vm.get("name"), {})
            if "hostPath" in vol:
                host = vol["hostPath"].get("path", "/")
            else:
                host = os.path.join(self.dir, "volumes", vm["name"])
                os.makedirs(host, exist_ok=True)
                self._write_projected(vol, host)
            if vm.get("subPath"):
                host = os.path.join(host, vm["subPath"])
            mounts.append((vm["mountPath"].rstrip("/") or "/", host))
        return sorted(mounts, key=lambda mh: -len(mh[0]))

    def _write_projected(self, vol: dict, host: str) -> None:
        source = None
        if "configMap" in vol:
            source = self.sim.cluster.peek(CONFIGMAPS, self.namespace, vol["configMap"].get("name", ""))
            files = {k: v.encode() for k, v in ((source or {}).get("data") or {}).items()}
        elif "secret" in vol:
            source = self.sim.cluster.peek(SECRETS, self.namespace, vol["secret"].get("secretName", ""))
            files = {k: base64.b64decode(v) for k, v in ((source or {}).get("data") or {}).items()}
        else:
            return
        for k, data in files.items():
            with open(os.path.join(host, k), "wb") as f:
                f.write(data)

    def _rewrite_path(self, arg: str) -> str:
        """An arg naming a path under a mount, as the host sees it."""
        if arg.startswith("-") and "=" in arg:
            flag, value = arg.split("=", 1)
            return f"{flag}={self._rewrite_path(value)}"
        for mount, host in self.mounts:
            if arg == mount:
                return host
            if arg.startswith(mount + "/") or mount == "/":
                return host + arg[len(mount):] if mount != "/" else os.path.join(host, arg.lstrip("/"))
        return arg

    def _field_value(self, ref: str) -> str:
        return {"metadata.name": self.name, "metadata.namespace": self.namespace, "metadata.uid": self.uid,
                "status.podIP": self.ip, "status.hostIP": "127.0.0.1", "spec.nodeName": "sim",
                "spec.serviceAccountName": self.spec.get("serviceAccountName", "default")}.get(ref, "")

    def container_env(self) -> dict[str, str]:
        """The container's env (value, fieldRef, secretKeyRef,
        configMapKeyRef); raises LookupError for a missing reference, which
        the real kubelet reports as CreateContainerConfigError."""
        env: dict[str, str] = {}
        expand = lambda s: re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)",  # noqa: E731
                                  lambda mm: env.get(mm.group(1), mm.group(0)), s)
        for e in self.container.get("env") or []:
            name, src = e.get("name"), e.get("valueFrom") or {}
            if "value" in e:
                env[name] = self._rewrite_path(expand(str(e["value"])))
            elif "fieldRef" in src:
                env[name] = self._field_value(src["fieldRef"].get("fieldPath", ""))
            elif "secretKeyRef" in src or "configMapKeyRef" in src:
                value = self._key_ref(src)
                if value is not None:
                    env[name] = value
            elif name:
                env[name] = ""
        return env

    def _key_ref(self, src: dict) -> Optional[str]:
        is_secret = "secretKeyRef" in src
        ref = src["secretKeyRef" if is_secret else "configMapKeyRef"]
        obj = self.sim.cluster.peek(SECRETS if is_secret else CONFIGMAPS, self.namespace, ref.get("name", ""))
        data = (obj or {}).get("data") or {}
        if ref.get("key") in data:
            return base64.b64decode(data[ref["key"]]).decode() if is_secret else data[ref["key"]]
        if ref.get("optional"):
            return None
        kind = "secret" if is_secret else "configmap"
        raise LookupError(f'{kind} "{ref.get("name")}" not found' if obj is None
                          else f"couldn't find key {ref.get('key')} in {kind.capitalize()} {self.namespace}/{ref.get('name')}")

    def command_line(self, env: dict[str, str]) -> list[str]:
        """The image's entrypoint is the wasmscore binary; args are adapted
        as the pod's network namespace and volumes would make them true."""
        c = self.container
        expand = lambda s: re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)",  # noqa: E731
                                  lambda mm: env.get(mm.group(1), mm.group(0)), s)
        command = [expand(str(a)) for a in c.get("command") or []]
        args = [expand(str(a)) for a in c.get("args") or []]
        if command and os.path.basename(command[0]) != "wasmscore":
            argv = command + args
        else:
            if not self.sim.wasmscore:
                raise LookupError("the simulator was started without --wasmscore: no binary to run the image's "
                                  "entrypoint (wasmscore) with")
            argv = [self.sim.wasmscore] + command[1:] + args
        out = []
        for i, a in enumerate(argv):
            if i > 0 and argv[i - 1] == "--listen":
                a = self.ip  # 0.0.0.0 in the pod's own network namespace is its IP
            elif a.startswith("--listen="):
                a = f"--listen={self.ip}"
            out.append(self._rewrite_path(a))
        artifacts = [out[i + 1] for i, a in enumerate(out[:-1]) if a == "--artifact"]
        artifacts += [a.split("=", 1)[1] for a in out if a.startswith("--artifact=")]
        if any(_is_local_registry(a) for a in artifacts) and "--insecure" not in out:
            out.append("--insecure")  # a loopback registry here speaks plain HTTP; a cluster's has TLS
        return out

    # -- the loop ---------------------------------------------------------

    def run(self) -> None:
        while not self.done and not self.sim.stopping.is_set():
            try:
                with self.lock:
                    now = time.monotonic()
                    self.step(now)
                    due = self.due_probes(now)
                # Probes are network I/O (up to a second): outside the lock,
                # so that reading the pod's status never waits on them.
                results = [(kind, self.probe(spec)) for kind, spec in due]
                with self.lock:
                    for kind, ok in results:
                        self.record_probe(kind, ok, time.monotonic())
            except Exception:
                traceback.print_exc()
            time.sleep(0.05)

    def step(self, now: float) -> None:
        self.reap(now)
        if self.terminating:
            self.step_termination(now)
        elif self.proc is None and self.finished is None and now >= self.next_start:
            self.start(now)

    def start(self, now: float) -> None:
        try:
            env = self.container_env()
            argv = self.command_line(env)
        except LookupError as e:
            # Real: CreateContainerConfigError, retried; retried here every 2 s.
            self.waiting = ("CreateContainerConfigError" if "found" in str(e) else "CreateContainerError", str(e))
            self.next_start = now + 2.0
            return
        try:
            with open(self.log_path, "ab") as logf:
                self.proc = subprocess.Popen(_orphan_guard(argv), stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                             env={**os.environ, **env}, cwd=self.dir, start_new_session=True)
        except OSError as e:
            self.started_at = now_rfc3339()
            self.record_exit(128, "StartError", f"failed to start container: {e}")
            return
        log(f"kubelet: started {self.namespace}/{self.name} at {self.ip} pid {self.proc.pid}: {' '.join(argv)}")
        self.started_at, self.started_mono, self.waiting = now_rfc3339(), now, None
        self.started_wall, self.ready_wall = time.time(), 0.0
        self.ready = "readinessProbe" not in self.container
        self.ready_ok = self.ready_fail = self.live_fail = 0
        self.next_ready_probe = now + self._probe_field("readinessProbe", "initialDelaySeconds", 0)
        self.next_live_probe = now + self._probe_field("livenessProbe", "initialDelaySeconds", 0)

    def reap(self, now: float) -> None:
        if self.proc is None:
            return
        code = self.proc.poll()
        if code is None:
            if self.kill_deadline is not None and now >= self.kill_deadline:
                _signal_group(self.proc, signal.SIGKILL)
            return
        self.proc, self.ready, self.kill_deadline = None, False, None
        code = 128 - code if code < 0 else code  # killed by signal N: 128+N, as runtimes report
        if self.terminating:
            self.done = True
            return
        message = ""
        if code != 0 and self.container.get("terminationMessagePolicy") == "FallbackToLogsOnError":
            message = _log_tail(self.log_path)
        self.record_exit(code, "Completed" if code == 0 else "Error", message)

    def record_exit(self, code: int, reason: str, message: str) -> None:
        term = {"exitCode": code, "reason": reason, "startedAt": self.started_at or now_rfc3339(),
                "finishedAt": now_rfc3339()}
        if message:
            term["message"] = message
        log(f"kubelet: {self.namespace}/{self.name} exited with {code}")
        policy = self.spec.get("restartPolicy", "Always")
        if policy == "Never" or (policy == "OnFailure" and code == 0):
            self.finished = term
            return
        self.last_terminated = term
        self.restarts += 1
        now = time.monotonic()
        if self.started_mono and now - self.started_mono > 2 * BACKOFF_CAP_SECONDS:
            self.crashes_in_row = 0  # it ran a while: the backoff starts over
        delay = min(BACKOFF_CAP_SECONDS, 2.0 ** self.crashes_in_row)
        self.crashes_in_row += 1
        self.next_start = now + delay
        self.waiting = ("CrashLoopBackOff", f"back-off {delay:g}s restarting failed container={self.container['name']} "
                                            f"pod={self.name}_{self.namespace}({self.uid})")

    # -- probes -----------------------------------------------------------

    def _probe_field(self, probe: str, key: str, default: float) -> float:
        return float((self.container.get(probe) or {}).get(key, default))

    def probe(self, spec: dict) -> bool:
        """One httpGet/tcpSocket probe; exec and grpc probes pass (not
        simulated)."""
        action = spec.get("httpGet") or spec.get("tcpSocket")
        if action is None:
            return True
        host, port = action.get("host") or self.ip, self._port(action.get("port"))
        if port is None:
            return False
        if "tcpSocket" in spec:
            try:
                socket.create_connection((host, port), timeout=PROBE_TIMEOUT_SECONDS).close()
                return True
            except OSError:
                return False
        conn_type = http.client.HTTPSConnection if action.get("scheme") == "HTTPS" else http.client.HTTPConnection
        kwargs = {"context": __import__("ssl")._create_unverified_context()} if conn_type is http.client.HTTPSConnection else {}
        conn = conn_type(host, port, timeout=PROBE_TIMEOUT_SECONDS, **kwargs)
        headers = {"User-Agent": "kube-probe/1.36", "Accept": "*/*"}
        headers.update({h["name"]: h["value"] for h in action.get("httpHeaders") or []})
        try:
            conn.request("GET", action.get("path") or "/", headers=headers)
            status = conn.getresponse().status
            return 200 <= status < 400  # the kubelet's rule: 2xx and 3xx pass
        except (OSError, http.client.HTTPException):
            return False
        finally:
            conn.close()

    def _port(self, port: Any) -> Optional[int]:
        if isinstance(port, int):
            return port
        for p in self.container.get("ports") or []:
            if p.get("name") == port:
                return p.get("containerPort")
        return int(port) if isinstance(port, str) and port.isdigit() else None

    def due_probes(self, now: float) -> list[tuple[str, dict]]:
        """The probes to run now: readiness every --probe-period (real:
        its periodSeconds), also while terminating (the endpoint's
        `serving`); liveness at its periodSeconds, not while terminating."""
        if self.proc is None:
            return []
        due = []
        spec = self.container.get("readinessProbe")
        if spec and now >= self.next_ready_probe:
            self.next_ready_probe = now + self.sim.probe_period
            due.append(("readiness", spec))
        spec = self.container.get("livenessProbe")
        if spec and now >= self.next_live_probe and self.kill_deadline is None and not self.terminating:
            self.next_live_probe = now + float(spec.get("periodSeconds", 10))
            due.append(("liveness", spec))
        return due

    def record_probe(self, kind: str, ok: bool, now: float) -> None:
        if self.proc is None:
            return  # it exited meanwhile
        spec = self.container[f"{kind}Probe"]
        if kind == "readiness":
            if ok:
                self.ready_fail, self.ready_ok = 0, self.ready_ok + 1
                if self.ready_ok >= spec.get("successThreshold", 1):
                    self.ready = True
                    self.ready_wall = self.ready_wall or time.time()
            else:
                self.ready_ok, self.ready_fail = 0, self.ready_fail + 1
                if self.ready_fail >= spec.get("failureThreshold", 3):
                    self.ready = False
            return
        if ok:
            self.live_fail = 0
            return
        self.live_fail += 1
        if self.live_fail >= spec.get("failureThreshold", 3) and self.kill_deadline is None:
            log(f"kubelet: {self.namespace}/{self.name} failed its liveness probe; restarting it")
            self.ready = False
            _signal_group(self.proc, signal.SIGTERM)
            self.kill_deadline = now + float(self.spec.get("terminationGracePeriodSeconds", 30))

    # -- termination ------------------------------------------------------

    def terminate(self, grace: float) -> None:
        """Graceful stop: preStop hook, SIGTERM, SIGKILL at GRACE seconds
        (counted from now, the hook included)."""
        with self.lock:
            if self.terminating:
                return
            now = time.monotonic()
            self.terminating, self.term_deadline = True, now + grace
            pre_stop = get_path(self.container, ("lifecycle", "preStop")) or {}
            sleep = float(get_path(pre_stop, ("sleep", "seconds"), 0)) if self.proc else 0.0
            self.prestop_until = min(now + sleep, self.term_deadline)
            self.prestop_http = pre_stop.get("httpGet") if self.proc else None
            log(f"kubelet: stopping {self.namespace}/{self.name} (grace {grace:g}s)")

    def step_termination(self, now: float) -> None:
        if self.proc is None:
            self.done = True
            return
        if not self.sigterm_sent:
            if self.prestop_http is not None:
                self.probe({"httpGet": self.prestop_http})  # its answer does not matter
                self.prestop_http = None
            if now < self.prestop_until:
                return
            _signal_group(self.proc, signal.SIGTERM)
            self.sigterm_sent = True
        elif now >= self.term_deadline:
            _signal_group(self.proc, signal.SIGKILL)

    def kill_now(self) -> None:
        """Force deletion and shutdown: SIGKILL, no grace."""
        with self.lock:
            self.terminating = self.done = True
            proc, self.proc = self.proc, None
        _signal_group(proc, signal.SIGKILL)
        if proc is not None:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass

    # -- what the Pod object shows ------------------------------------------

    def pod_status(self, old_status: dict) -> dict:
        with self.lock:
            c = self.container
            cs: dict = {"name": c["name"], "image": c.get("image", ""), "imageID": "", "ready": self.ready,
                        "restartCount": self.restarts, "started": self.proc is not None}
            if self.proc is not None:
                cs["containerID"] = f"sim://{self.proc.pid}"
                cs["state"] = {"running": {"startedAt": self.started_at}}
            elif self.finished is not None:
                cs["state"] = {"terminated": self.finished}
            else:
                reason, message = self.waiting or ("ContainerCreating", "")
                cs["state"] = {"waiting": dict({"reason": reason}, **({"message": message} if message else {}))}
            cs["lastState"] = {"terminated": self.last_terminated} if self.last_terminated else {}
            if self.finished is not None:
                phase = "Succeeded" if self.finished["exitCode"] == 0 else "Failed"
            else:
                phase = "Running" if self.proc is not None or self.last_terminated else "Pending"
            ready = "True" if self.ready else "False"
            conditions = [("PodReadyToStartContainers", "True"), ("Initialized", "True"), ("Ready", ready),
                          ("ContainersReady", ready), ("PodScheduled", "True")]
        return {
            "phase": phase,
            "conditions": with_transition_times([{"type": t, "status": s} for t, s in conditions],
                                                old_status.get("conditions") or []),
            "hostIP": "127.0.0.1", "hostIPs": [{"ip": "127.0.0.1"}],
            "podIP": self.ip, "podIPs": [{"ip": self.ip}],
            "startTime": self.start_time,
            "containerStatuses": [cs],
            "qosClass": "Burstable" if c.get("resources") else "BestEffort",
        }


def with_transition_times(conditions: list[dict], old: list[dict]) -> list[dict]:
    """lastTransitionTime moves only when a condition's status changes (so
    that an unchanged status is an unchanged object: no write)."""
    before = {c.get("type"): c for c in old}
    out = []
    for c in conditions:
        prev = before.get(c["type"])
        t = prev.get("lastTransitionTime") if prev and prev.get("status") == c["status"] else now_rfc3339()
        out.append(dict(c, lastTransitionTime=t))
    return out


def pod_ready(pod: dict) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in get_path(pod, ("status", "conditions")) or [])


def controller_uid(obj: dict) -> Optional[str]:
    return next((r.get("uid") for r in get_path(obj, ("metadata", "ownerReferences")) or [] if r.get("controller")), None)


# --------------------------------------------------------------------------
# The stand-in controllers: kubelet sync, Deployments, EndpointSlices,
# garbage collection, namespaces. One thread, every 0.2 s, acting on the
# store directly (their writes are ordinary writes: rv bumps, events,
# managedFields under their real managers' names).
# --------------------------------------------------------------------------

TICK_SECONDS = 0.2
CONTROLLER_MANAGER = "kube-controller-manager"
SLICE_MANAGER = "endpointslice-controller.k8s.io"


def _int_or_percent(value: Any, total: int, round_up: bool) -> int:
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.endswith("%"):
        x = total * int(value[:-1]) / 100
        return int(-(-x // 1)) if round_up else int(x // 1)
    return int(value or 0)


def rolling_params(spec: dict, desired: int) -> tuple[int, int]:
    """(maxSurge, maxUnavailable) as the deployment controller resolves them."""
    ru = get_path(spec, ("strategy", "rollingUpdate")) or {}
    surge = _int_or_percent(ru.get("maxSurge", "25%"), desired, True)
    unavailable = _int_or_percent(ru.get("maxUnavailable", "25%"), desired, False)
    if surge == 0 and unavailable == 0:
        unavailable = 1
    return surge, min(unavailable, desired)


@dataclass
class Progress:
    """When a Deployment last made progress (for progressDeadlineSeconds)."""
    key: tuple
    since: float = field(default_factory=time.monotonic)


class Controllers:
    def __init__(self, sim: "Sim"):
        self.sim, self.cluster = sim, sim.cluster
        self.workers: dict[str, PodWorker] = {}  # by pod uid
        self.ips = PodIPs()
        self.pod_seq: dict[str, int] = {}  # creation order, for "newest first"
        self.progress: dict[str, Progress] = {}  # by Deployment uid
        self.thread = threading.Thread(target=self.run, name="controllers", daemon=True)

    def run(self) -> None:
        while not self.sim.stopping.wait(TICK_SECONDS):
            for step in (self.sync_deployments, self.sync_kubelet, self.sync_deployment_status,
                         self.sync_endpointslices, self.cluster.collect_garbage, self.cluster.finish_namespaces):
                try:
                    step()
                except ApiError as e:
                    log(f"controllers: {step.__name__}: {e.code} {e.message}")
                except Exception:
                    traceback.print_exc()

    # -- kubelet ----------------------------------------------------------

    def release(self, w: PodWorker) -> None:
        self.workers.pop(w.uid, None)
        self.ips.release(w.ip)

    def sync_kubelet(self) -> None:
        """Run every pod bound to node "sim" (and bind unscheduled ones):
        start workers, pass on deletions, write status when it changed,
        remove pods whose processes have stopped."""
        pods, _ = self.cluster.list(PODS, None)
        seen = set()
        for pod in pods:
            m = pod["metadata"]
            w = self.workers.get(m["uid"])
            if w is None:
                if m.get("deletionTimestamp"):
                    self._remove_pod(pod)  # never ran: nothing to stop
                    continue
                if get_path(pod, ("status", "phase")) in ("Succeeded", "Failed"):
                    continue
                pod = self._bind(pod)
                ports = [p.get("containerPort") for c in pod["spec"].get("containers") or []
                         for p in c.get("ports") or [] if isinstance(p.get("containerPort"), int)]
                w = PodWorker(self.sim, pod, self.ips.allocate(ports))
                self.workers[w.uid] = w
                w.thread.start()
            seen.add(w.uid)
            if m.get("deletionTimestamp") and not w.terminating:
                w.terminate(float(m.get("deletionGracePeriodSeconds") or 0))
            if w.done:
                self._remove_pod(pod)
                self.release(w)
                continue
            status = w.pod_status(pod.get("status") or {})
            if not json_equal(status, pod.get("status")):
                self._write(PODS, pod, "status", lambda o, s=status: dict(o, status=s), "kubelet")
        for uid, w in list(self.workers.items()):
            if uid not in seen:  # force-deleted (grace 0) or its namespace went: no grace
                w.kill_now()
                self.release(w)

    def _bind(self, pod: dict) -> dict:
        """The scheduler: one node, "sim"."""
        if get_path(pod, ("spec", "nodeName")):
            return pod
        def bind(o: dict) -> dict:
            o["spec"]["nodeName"] = "sim"
            return o
        return self._write(PODS, pod, "", bind, "default-scheduler") or pod

    def _remove_pod(self, pod: dict) -> None:
        try:
            self.cluster.delete(PODS, pod["metadata"]["namespace"], pod["metadata"]["name"], {"gracePeriodSeconds": 0})
        except ApiError:
            pass  # gone already

    def _write(self, rt: ResourceType, obj: dict, sub: str, mutate: Callable[[dict], dict],
               manager: str) -> Optional[dict]:
        m = obj["metadata"]
        try:
            return self.cluster.update(rt, m.get("namespace", ""), m["name"], sub, mutate, manager)
        except ApiError as e:
            if e.code != 404:
                raise
            return None

    def pods_report(self) -> list[dict]:
        out = []
        for w in list(self.workers.values()):
            with w.lock:
                port = next((p.get("containerPort") for p in w.container.get("ports") or []), None)
                out.append({"name": w.name, "namespace": w.namespace, "deployment": w.owner, "ip": w.ip,
                            "port": port, "ready": w.ready, "terminating": w.terminating,
                            "pid": w.proc.pid if w.proc else None, "restarts": w.restarts, "log": w.log_path,
                            "startedAt": w.started_wall or None, "readyAt": w.ready_wall or None})
        return sorted(out, key=lambda p: (p["namespace"], p["name"]))

    def stop_all(self) -> None:
        for w in list(self.workers.values()):
            w.kill_now()

    # -- Deployments --------------------------------------------------------

    def _pods_by_owner(self) -> dict[str, list[dict]]:
        by_owner: dict[str, list[dict]] = {}
        for pod in self.cluster.list(PODS, None)[0]:
            uid = controller_uid(pod)
            if uid:
                by_owner.setdefault(uid, []).append(pod)
        return by_owner

    def sync_deployments(self) -> None:
        by_owner = self._pods_by_owner()
        for dep in self.cluster.list(DEPLOYMENTS, None)[0]:
            if not dep["metadata"].get("deletionTimestamp") and not get_path(dep, ("spec", "paused")):
                self.sync_deployment(dep, by_owner.get(dep["metadata"]["uid"], []))

    def sync_deployment(self, dep: dict, pods: list[dict]) -> None:
        """ReplicaSets are not modelled: pods belong to the Deployment and the
        template hash label tells new from old."""
        spec = dep["spec"]
        desired = spec.get("replicas", 1)
        h = safe_hash(spec.get("template"))
        active = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
        new = [p for p in active if get_path(p, ("metadata", "labels", "pod-template-hash")) == h]
        old = [p for p in active if p not in new]
        if get_path(spec, ("strategy", "type")) == "Recreate":
            for p in old:
                self._delete_pod(p)
            if not old and len(active) == len(pods):  # old ones gone, terminating ones included
                self._scale(dep, new, desired, h)
            return
        if not old:
            self._scale(dep, new, desired, h)
            return
        self._roll(dep, active, new, old, desired, h)

    def _roll(self, dep: dict, active: list, new: list, old: list, desired: int, h: str) -> None:
        """One step of a rolling update, as the real controller bounds it:
        at most desired+maxSurge pods, at least desired-maxUnavailable ready."""
        surge, unavailable = rolling_params(dep["spec"], desired)
        for _ in range(max(0, min(desired + surge - len(active), desired - len(new)))):
            self._create_pod(dep, h)
        if len(new) > desired:
            for p in self._ranked(new)[: len(new) - desired]:
                self._delete_pod(p)
        min_available = desired - unavailable
        budget = len(active) - min_available - sum(not pod_ready(p) for p in new)
        for p in [p for p in self._ranked(old) if not pod_ready(p)]:  # unhealthy old pods go first
            if budget <= 0:
                return
            self._delete_pod(p)
            budget -= 1
        can = min(budget, sum(pod_ready(p) for p in active) - min_available)
        for p in [p for p in self._ranked(old) if pod_ready(p)][:max(0, can)]:
            self._delete_pod(p)

    def _scale(self, dep: dict, pods: list[dict], desired: int, h: str) -> None:
        for _ in range(desired - len(pods)):
            self._create_pod(dep, h)
        for p in self._ranked(pods)[: max(0, len(pods) - desired)]:
            self._delete_pod(p)

    def _ranked(self, pods: list[dict]) -> list[dict]:
        """Which pods go first on scale-down: not ready, then the newest."""
        return sorted(pods, key=lambda p: (pod_ready(p), -self.pod_seq.get(p["metadata"]["uid"], 0),
                                           p["metadata"].get("creationTimestamp", "")))

    def _create_pod(self, dep: dict, h: str) -> None:
        template = copy.deepcopy(dep["spec"].get("template") or {})
        tm = template.get("metadata") or {}
        m = dep["metadata"]
        pod = {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {
                "generateName": f"{m['name']}-{h}-",
                "labels": dict(tm.get("labels") or {}, **{"pod-template-hash": h}),
                "annotations": tm.get("annotations") or {},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": m["name"],
                                     "uid": m["uid"], "controller": True, "blockOwnerDeletion": True}],
            },
            "spec": dict(template.get("spec") or {}, nodeName="sim"),
        }
        created = self.cluster.create(PODS, m["namespace"], pod, CONTROLLER_MANAGER)
        self.pod_seq[created["metadata"]["uid"]] = len(self.pod_seq) + 1

    def _delete_pod(self, pod: dict) -> None:
        try:
            self.cluster.delete(PODS, pod["metadata"]["namespace"], pod["metadata"]["name"], {})
        except ApiError:
            pass

    def sync_deployment_status(self) -> None:
        by_owner = self._pods_by_owner()
        for dep in self.cluster.list(DEPLOYMENTS, None)[0]:
            status = self.deployment_status(dep, by_owner.get(dep["metadata"]["uid"], []))
            if not json_equal(status, dep.get("status") or {}):
                self._write(DEPLOYMENTS, dep, "status", lambda o, s=status: dict(o, status=s), CONTROLLER_MANAGER)

    def deployment_status(self, dep: dict, pods: list[dict]) -> dict:
        spec, m = dep["spec"], dep["metadata"]
        desired = spec.get("replicas", 1)
        h = safe_hash(spec.get("template"))
        active = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
        new = [p for p in active if get_path(p, ("metadata", "labels", "pod-template-hash")) == h]
        ready = sum(pod_ready(p) for p in active)
        new_ready = sum(pod_ready(p) for p in new)
        counts = {"replicas": len(active), "updatedReplicas": len(new), "readyReplicas": ready,
                  "availableReplicas": ready, "unavailableReplicas": max(0, max(len(active), desired) - ready),
                  "terminatingReplicas": len(pods) - len(active)}
        status: dict = {"observedGeneration": m.get("generation", 1)}
        status.update({k: v for k, v in counts.items() if v})  # omitempty, as the real status
        complete = len(new) == desired and new_ready == desired and len(active) == len(new)
        progress = self._progress(m["uid"], (h, desired, new_ready, len(active) - len(new)))
        rs = f'ReplicaSet "{m["name"]}-{h}"'
        if complete:
            progressing = ("True", "NewReplicaSetAvailable", f"{rs} has successfully progressed.")
        elif time.monotonic() - progress.since > spec.get("progressDeadlineSeconds", 600):
            progressing = ("False", "ProgressDeadlineExceeded", f"{rs} has timed out progressing.")
        else:
            progressing = ("True", "ReplicaSetUpdated", f"{rs} is progressing.")
        _, unavailable = rolling_params(spec, desired)
        if get_path(spec, ("strategy", "type")) == "Recreate":
            unavailable = 0
        if ready >= desired - unavailable:
            available = ("True", "MinimumReplicasAvailable", "Deployment has minimum availability.")
        else:
            available = ("False", "MinimumReplicasUnavailable", "Deployment does not have minimum availability.")
        status["conditions"] = self._conditions([("Available", *available), ("Progressing", *progressing)],
                                                get_path(dep, ("status", "conditions")) or [])
        return status

    def _progress(self, uid: str, key: tuple) -> Progress:
        """Progress is any change of (template, replicas, ready new pods,
        old pods left); the deadline counts from the last one."""
        p = self.progress.get(uid)
        if p is None or p.key != key:
            p = self.progress[uid] = Progress(key)
        return p

    @staticmethod
    def _conditions(conds: list[tuple[str, str, str, str]], old: list[dict]) -> list[dict]:
        before = {c.get("type"): c for c in old}
        out = []
        for type_, status, reason, message in conds:
            prev = before.get(type_) or {}
            same = (prev.get("status"), prev.get("reason"), prev.get("message")) == (status, reason, message)
            t = now_rfc3339()
            out.append({"type": type_, "status": status,
                        "lastUpdateTime": prev.get("lastUpdateTime", t) if same else t,
                        "lastTransitionTime": prev.get("lastTransitionTime", t) if prev.get("status") == status else t,
                        "reason": reason, "message": message})
        return out

    # -- EndpointSlices -----------------------------------------------------

    def sync_endpointslices(self) -> None:
        pods = self.cluster.list(PODS, None)[0]
        for svc in self.cluster.list(SERVICES, None)[0]:
            m = svc["metadata"]
            if m.get("deletionTimestamp"):
                continue
            name = f"{m['name']}-sim"
            existing = self.cluster.peek(ENDPOINTSLICES, m["namespace"], name)
            selector = get_path(svc, ("spec", "selector"))
            if not selector:
                if existing is not None and controller_uid(existing) == m["uid"]:
                    self.cluster.delete(ENDPOINTSLICES, m["namespace"], name, {})
                continue
            selected = [p for p in pods if p["metadata"]["namespace"] == m["namespace"]
                        and all(get_path(p, ("metadata", "labels", k)) == v for k, v in selector.items())
                        and get_path(p, ("status", "podIP"))
                        and get_path(p, ("status", "phase")) not in ("Succeeded", "Failed")]
            desired = self.endpointslice(svc, name, selected)
            if existing is None:
                self.cluster.create(ENDPOINTSLICES, m["namespace"], desired, SLICE_MANAGER)
            elif not self._same_slice(existing, desired):
                self._write(ENDPOINTSLICES, existing, "",
                            lambda o, d=desired: dict(d, metadata=dict(o["metadata"], **d["metadata"])), SLICE_MANAGER)

    @staticmethod
    def _same_slice(a: dict, b: dict) -> bool:
        pick = lambda o: {"labels": get_path(o, ("metadata", "labels")),  # noqa: E731
                          "owners": get_path(o, ("metadata", "ownerReferences")),
                          **{k: o.get(k) for k in ("addressType", "ports", "endpoints")}}
        return json_equal(pick(a), pick(b))

    def endpointslice(self, svc: dict, name: str, pods: list[dict]) -> dict:
        """What the endpointslice controller makes of a Service and its pods."""
        m, spec = svc["metadata"], svc["spec"]
        labels = dict(m.get("labels") or {})
        labels.update({"kubernetes.io/service-name": m["name"],
                       "endpointslice.kubernetes.io/managed-by": SLICE_MANAGER})
        if spec.get("clusterIP") == "None":
            labels["service.kubernetes.io/headless"] = ""
        ports = []
        for sp in spec.get("ports") or []:
            target = self._target_port(sp.get("targetPort", sp.get("port")), pods)
            if target is not None:
                ports.append({"name": sp.get("name", ""), "port": target, "protocol": sp.get("protocol", "TCP")})
        publish_not_ready = bool(spec.get("publishNotReadyAddresses"))
        endpoints = [self._endpoint(p, publish_not_ready) for p in sorted(pods, key=lambda p: p["metadata"]["name"])]
        out = {
            "apiVersion": ENDPOINTSLICES.api_version, "kind": ENDPOINTSLICES.kind,
            "metadata": {"name": name, "namespace": m["namespace"], "labels": labels,
                         "ownerReferences": [{"apiVersion": "v1", "kind": "Service", "name": m["name"],
                                              "uid": m["uid"], "controller": True, "blockOwnerDeletion": True}]},
            "addressType": "IPv4",
        }
        if ports:
            out["ports"] = ports
        if endpoints:
            out["endpoints"] = endpoints
        return out

    @staticmethod
    def _target_port(target: Any, pods: list[dict]) -> Optional[int]:
        if isinstance(target, int):
            return target
        for p in pods:  # a named port: the pods' container port of that name
            for c in get_path(p, ("spec", "containers")) or []:
                for cp in c.get("ports") or []:
                    if cp.get("name") == target:
                        return cp.get("containerPort")
        return None

    @staticmethod
    def _endpoint(pod: dict, publish_not_ready: bool) -> dict:
        """As the real controller's podToEndpoint: `serving` is the pod's
        readiness, `terminating` its deletion, and `ready` is serving and
        not terminating -- or always true when the Service sets
        publishNotReadyAddresses."""
        m = pod["metadata"]
        serving = pod_ready(pod)
        terminating = bool(m.get("deletionTimestamp"))
        ready = publish_not_ready or (serving and not terminating)
        return {"addresses": [pod["status"]["podIP"]],
                "conditions": {"ready": ready, "serving": serving, "terminating": terminating},
                "targetRef": {"kind": "Pod", "namespace": m["namespace"], "name": m["name"], "uid": m["uid"]},
                "nodeName": pod["spec"].get("nodeName", "sim")}


# --------------------------------------------------------------------------
# Wiring and main
# --------------------------------------------------------------------------


class Sim:
    def __init__(self, args: argparse.Namespace):
        self.state_dir = os.path.abspath(args.state_dir)
        self.wasmscore = os.path.abspath(args.wasmscore) if args.wasmscore else None
        self.probe_period = args.probe_period
        self.bookmark_interval = args.bookmark_interval
        self.audit_log = open(args.audit_log_path, "a", buffering=1) if args.audit_log_path else None
        self.audit_lock = threading.Lock()
        self.port = 0
        self.stopping = threading.Event()
        self.cluster = Cluster()
        self.controllers = Controllers(self)
        for ns in ("default", "kube-system", "kube-public", "kube-node-lease"):
            self.cluster.create(NAMESPACES, "", {"metadata": {"name": ns}}, "kube-apiserver")
        if args.crd:
            with open(args.crd) as f:
                self.cluster.create(CRDS, "", json.load(f), "kube-apiserver")


def write_atomically(path: str, text: str) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def kubeconfig(url: str) -> str:
    return (
        "apiVersion: v1\n"
        "kind: Config\n"
        "clusters:\n"
        "- name: sim\n"
        "  cluster:\n"
        f"    server: {url}\n"
        "users:\n"
        "- name: sim\n"
        "  user:\n"
        "    token: sim\n"
        "contexts:\n"
        "- name: sim\n"
        "  context:\n"
        "    cluster: sim\n"
        "    user: sim\n"
        "    namespace: default\n"
        "current-context: sim\n"
    )


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--state-dir", required=True, help="kubeconfig, apiserver.json and pods/ go here")
    p.add_argument("--port", type=int, default=0, help="0: a free port")
    p.add_argument("--wasmscore", help="the binary a pod's container runs (the image's entrypoint)")
    p.add_argument("--crd", help="a CustomResourceDefinition (JSON) to install at start (validation schema)")
    p.add_argument("--probe-period", type=float, default=0.25, help="seconds between readiness probes")
    p.add_argument("--bookmark-interval", type=float, default=2.0, help="seconds between watch bookmarks")
    p.add_argument("--audit-log-path", help="one audit.k8s.io/v1 Event per resource request (JSON lines), "
                   "the user being the request's bearer token")
    p.add_argument("-v", "--verbose", action="count", default=1, help="more logging (-v: kubelet detail)")
    p.add_argument("-q", "--quiet", action="store_true", help="errors only")
    return p.parse_args(argv)


def main(argv: Optional[list[str]] = None) -> int:
    global VERBOSE
    args = parse_args(argv)
    VERBOSE = 0 if args.quiet else args.verbose
    os.makedirs(os.path.join(args.state_dir, "pods"), exist_ok=True)
    sim = Sim(args)
    Handler.sim = sim
    server = http.server.ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True
    sim.port = server.server_address[1]
    url = f"http://127.0.0.1:{sim.port}"

    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    threading.Thread(target=server.serve_forever, name="http", daemon=True).start()
    sim.controllers.thread.start()

    write_atomically(os.path.join(args.state_dir, "kubeconfig"), kubeconfig(url))
    write_atomically(os.path.join(args.state_dir, "apiserver.json"),
                     json.dumps({"port": sim.port, "url": url, "pid": os.getpid()}))
    log(f"apiserver: serving {url} (state in {os.path.abspath(args.state_dir)})", 0)
    try:
        while not done.wait(0.5):
            pass
    finally:
        log("apiserver: stopping; killing the pods", 0)
        sim.stopping.set()
        sim.controllers.stop_all()
        server.shutdown()
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
