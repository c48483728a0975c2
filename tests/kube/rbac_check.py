"""Checks the simulated API server's audit log (apiserver.py
--audit-log-path) against the RBAC rules deploy/ ships: every request
made with a component's token must be one its role allows, as the real
server's RBAC authorizer would decide (a server-side apply that made its
object, answered 201, is authorized as create too).

    python tests/kube/rbac_check.py AUDIT_LOG TOKEN=FILE:KIND:NAME ...

e.g. operator=deploy/rbac.yaml:ClusterRole:wasmscore-operator. Requests
with other tokens are not checked. Prints what each token did and exits
1 if any request would have been refused.
"""
import json
import sys

import yaml


def rules_of(path: str, kind: str, name: str) -> list:
    with open(path) as f:
        for doc in yaml.safe_load_all(f):
            if doc and doc.get("kind") == kind and doc["metadata"]["name"] == name:
                return doc.get("rules") or []
    raise SystemExit(f"no {kind} {name} in {path}")


def allowed(rules: list, verb: str, ref: dict) -> bool:
    resource = ref["resource"] + ("/" + ref["subresource"] if ref.get("subresource") else "")
    for rule in rules:
        if not {ref.get("apiGroup", ""), "*"} & set(rule.get("apiGroups") or []):
            continue
        if not {resource, "*"} & set(rule.get("resources") or []):
            continue
        if not {verb, "*"} & set(rule.get("verbs") or []):
            continue
        names = rule.get("resourceNames")
        if names and ref.get("name") not in names:
            continue
        return True
    return False


def main() -> int:
    log, specs = sys.argv[1], sys.argv[2:]
    roles = {}
    for spec in specs:
        token, where = spec.split("=", 1)
        path, kind, name = where.split(":")
        roles[token] = rules_of(path, kind, name)
    seen = {t: set() for t in roles}
    refused = []
    with open(log) as f:
        for line in f:
            event = json.loads(line)
            token = event["user"]["username"]
            if token not in roles:
                continue
            ref = event["objectRef"]
            verbs = [event["verb"]]
            if event["verb"] == "patch" and event["responseStatus"]["code"] == 201:
                verbs.append("create")
            for verb in verbs:
                what = f"{verb} {ref.get('apiGroup') or 'core'}/{ref['resource']}" + (
                    f"/{ref['subresource']}" if ref.get("subresource") else "")
                seen[token].add(what)
                if not allowed(roles[token], verb, ref):
                    refused.append(f"{token}: {what} ({event['requestURI']})")
    for token, what in seen.items():
        print(f"{token}: {', '.join(sorted(what)) or 'no requests'}")
    for r in sorted(set(refused)):
        print(f"REFUSED {r}")
    return 1 if refused or not all(seen.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
