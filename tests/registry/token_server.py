"""A registry token server, as Docker Hub, GHCR, ACR and Harbor run one, for the tests.

The Docker distribution token protocol (distribution's docs/spec/auth/
token.md and oauth.md): a registry started with `auth: token:` answers an
unauthenticated request 401 with `WWW-Authenticate: Bearer realm=...,
service=...,scope=...`; the client asks the realm for a token for that
scope and sends it as `Authorization: Bearer`. The token is a JWT the
registry checks against `rootcertbundle`: signed RS256 by the key of the
certificate carried in its `x5c` header, for the registry's `service`
(audience) and `issuer`, granting the scope's actions.

Served here, on 127.0.0.1:
- GET /token?service=S&scope=repository:NAME:ACTIONS, with HTTP Basic
  credentials (or none: anonymous, granted nothing);
- POST /token, form-encoded OAuth2: grant_type=password (username,
  password) or grant_type=refresh_token (refresh_token: an identity token
  as `docker login` stores it for ACR), answering `access_token`.

A file `unavailable` beside the users file holding a number N makes the
next N requests answer 503, as a token service that is down does (the
file counts down). A file `expired` holding N makes the next N tokens
granted run out before they are used (their `exp` two minutes past, beyond
the minute of leeway distribution gives a clock's skew), as a token
granted at the start of a pull that outlasts it has when it is sent late.

Users: a file of JSON `{"user": {"password": "...", "actions": ["pull",
"push"], "refresh_token": "..."}}`. A user is granted the actions asked
for that its entry lists. Every grant is appended to `grants.log` beside
the users file, one JSON line each, for the test to read.

The standard library only, and `openssl dgst -sign` for the signature.

    python3 token_server.py PORT USERS_JSON KEY_PEM CERT_PEM ISSUER SERVICE
"""

import base64
import json
import subprocess
import sys
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

PORT, USERS, KEY, CERT, ISSUER, SERVICE = sys.argv[1:7]
GRANTS = Path(USERS).parent / "grants.log"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def cert_der() -> str:
    pem = Path(CERT).read_text()
    body = "".join(line for line in pem.splitlines() if line and not line.startswith("-----"))
    return body  # base64 of the DER, as x5c carries it


def sign(claims: dict) -> str:
    header = {"typ": "JWT", "alg": "RS256", "x5c": [cert_der()]}
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"
    sig = subprocess.run(
        ["openssl", "dgst", "-sha256", "-sign", KEY], input=signing_input.encode(), capture_output=True, check=True
    ).stdout
    return f"{signing_input}.{b64url(sig)}"


def token_for(user: str | None, scopes: list[str]) -> str:
    entry = json.loads(Path(USERS).read_text()).get(user or "", {})
    allowed = set(entry.get("actions", []))
    access = []
    for scope in scopes:
        parts = scope.split(":")
        if len(parts) != 3:
            continue
        kind, name, actions = parts
        granted = [a for a in actions.split(",") if a in allowed]
        access.append({"type": kind, "name": name, "actions": granted})
    expired = counted_down(EXPIRED)
    now = int(time.time()) - (300 + 120 if expired else 0)
    claims = {
        "iss": ISSUER,
        "sub": user or "",
        "aud": SERVICE,
        "exp": now + 300,
        "nbf": now - 10,
        "iat": now,
        "jti": uuid.uuid4().hex,
        "access": access,
    }
    with GRANTS.open("a") as f:
        f.write(json.dumps({"user": user, "access": access} | ({"expired": True} if expired else {})) + "\n")
    return sign(claims)


def users() -> dict:
    return json.loads(Path(USERS).read_text())


DOWN = Path(USERS).parent / "unavailable"
EXPIRED = Path(USERS).parent / "expired"


def counted_down(path: Path) -> bool:
    """Whether the count in `path` was above 0 (and is now one less)."""
    try:
        left = int(path.read_text())
    except (FileNotFoundError, ValueError):
        return False
    if left <= 0:
        return False
    path.write_text(str(left - 1))
    return True


def down() -> bool:
    """Whether this request is one of those the `unavailable` file asks to fail."""
    return counted_down(DOWN)


class Handler(BaseHTTPRequestHandler):
    def answer(self, status: int, body: dict):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if down():
            return self.answer(503, {"errors": [{"code": "UNAVAILABLE", "message": "the token service is down"}]})
        url = urlparse(self.path)
        if url.path != "/token":
            return self.answer(404, {"error": "not found"})
        q = parse_qs(url.query)
        if q.get("service", [""])[0] != SERVICE:
            return self.answer(400, {"error": "unknown service"})
        user = None
        auth = self.headers.get("Authorization", "")
        if auth.startswith("Basic "):
            name, _, password = base64.b64decode(auth[6:]).decode().partition(":")
            if users().get(name, {}).get("password") != password:
                return self.answer(401, {"errors": [{"code": "UNAUTHORIZED", "message": "wrong username or password"}]})
            user = name
        token = token_for(user, q.get("scope", []))
        self.answer(200, {"token": token, "access_token": token, "expires_in": 300})

    def do_POST(self):
        if down():
            return self.answer(503, {"error": "temporarily_unavailable"})
        if urlparse(self.path).path != "/token":
            return self.answer(404, {"error": "not found"})
        form = parse_qs(self.rfile.read(int(self.headers.get("Content-Length", "0"))).decode())
        one = lambda k: form.get(k, [""])[0]  # noqa: E731
        if one("service") != SERVICE:
            return self.answer(400, {"error": "invalid_request", "error_description": "unknown service"})
        if one("grant_type") == "password":
            user = one("username")
            if users().get(user, {}).get("password") != one("password"):
                return self.answer(401, {"error": "invalid_grant"})
        elif one("grant_type") == "refresh_token":
            matches = [u for u, e in users().items() if e.get("refresh_token") and e["refresh_token"] == one("refresh_token")]
            if not matches:
                return self.answer(401, {"error": "invalid_grant"})
            user = matches[0]
        else:
            return self.answer(400, {"error": "unsupported_grant_type"})
        token = token_for(user, one("scope").split(" ") if one("scope") else [])
        self.answer(200, {"access_token": token, "expires_in": 300, "scope": one("scope")})

    def log_message(self, *args):
        pass


ThreadingHTTPServer(("127.0.0.1", int(PORT)), Handler).serve_forever()
