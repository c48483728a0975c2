//! Security over HTTP with the real binary and CLI: the auth matrix (no
//! header, wrong key, each key, a regenerated key, tokens valid / expired /
//! forged / for another endpoint, rotated signing keys, auth off) over the
//! scoring route and every admin route.

use std::time::Duration;

use super::{error_code, iris_rust, model, Server};

const ROW: &str = r#"{"data": [[5.1, 3.5, 1.4, 0.2]]}"#;

impl Server {
    fn score_as(&self, endpoint: &str, authorization: Option<&str>) -> (u16, String, serde_json::Value) {
        let mut h = vec![("Content-Type", "application/json")];
        if let Some(a) = authorization {
            h.push(("Authorization", a));
        }
        self.request("POST", &format!("/api/v1/service/{endpoint}/score"), &h, ROW.as_bytes())
    }

    fn cli_json(&self, args: &[&str]) -> serde_json::Value {
        let out = self.cli_ok(args);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?} printed no JSON ({e}): {out}"))
    }

    fn token(&self, endpoint: &str, extra: &[&str]) -> String {
        let mut args = vec!["service", "get-access-token", endpoint];
        args.extend_from_slice(extra);
        let t = self.cli_json(&args);
        assert!(t["refreshBy"].as_str().unwrap().ends_with('Z'), "{t}");
        t["accessToken"].as_str().unwrap().to_string()
    }
}

fn bearer(s: &str) -> String {
    format!("Bearer {s}")
}

/// 401, with a JSON error and WWW-Authenticate, naming `what`.
fn refused(r: (u16, String, serde_json::Value), what: &str) {
    let (status, head, body) = r;
    assert_eq!(status, 401, "{body}");
    assert_eq!(error_code(&body), "unauthorized");
    assert!(head.contains("www-authenticate: bearer"), "{head}");
    let msg = body["error"]["message"].as_str().unwrap();
    assert!(msg.contains(what), "{msg:?} does not say {what:?}");
}

#[test]
fn the_auth_matrix_over_scoring_and_admin_routes() {
    let s = Server::start(&[]);
    s.deploy_ok("keyed", iris_rust(), &[&model()], None);
    s.deploy_ok("open", iris_rust(), &[&model()], Some(serde_json::json!({"auth_enabled": false})));
    for e in ["tokened", "other"] {
        s.cli_ok(&["service", "create", e, "--token-auth-enabled"]);
        s.deploy_ok(e, iris_rust(), &[&model()], None);
    }

    // Keys: either one, nothing else.
    let keys = s.cli_json(&["service", "get-keys", "keyed"]);
    let (primary, secondary) = (keys["primaryKey"].as_str().unwrap(), keys["secondaryKey"].as_str().unwrap());
    assert_ne!(primary, secondary);
    refused(s.score_as("keyed", None), "Authorization: Bearer <key>");
    refused(s.score_as("keyed", Some("Bearer not-the-key")), "not valid");
    refused(s.score_as("keyed", Some(primary)), "Bearer <key>");
    assert_eq!(s.score_as("keyed", Some(&bearer(primary))).0, 200);
    assert_eq!(s.score_as("keyed", Some(&bearer(secondary))).0, 200);
    // Another endpoint's key does not open this one.
    let open_keys = s.cli_json(&["service", "get-keys", "open"]);
    refused(
        s.score_as("keyed", Some(&bearer(open_keys["primaryKey"].as_str().unwrap()))),
        "not valid",
    );

    // A regenerated key: the old one is refused at once, the other still works.
    let regen = s.cli_json(&["service", "regen-key", "keyed", "--key", "primary"]);
    let new_primary = regen["primaryKey"].as_str().unwrap();
    assert_ne!(new_primary, primary);
    assert_eq!(regen["secondaryKey"], secondary);
    refused(s.score_as("keyed", Some(&bearer(primary))), "not valid");
    assert_eq!(s.score_as("keyed", Some(&bearer(new_primary))).0, 200);
    assert_eq!(s.score_as("keyed", Some(&bearer(secondary))).0, 200);

    // Auth off.
    assert_eq!(s.score_as("open", None).0, 200);

    // Tokens.
    let token = s.token("tokened", &[]);
    assert_eq!(s.score_as("tokened", Some(&bearer(&token))).0, 200);
    refused(s.score_as("tokened", None), "Bearer <token>");
    let tokened_keys = s.cli_json(&["service", "get-keys", "tokened"]);
    refused(
        s.score_as("tokened", Some(&bearer(tokened_keys["primaryKey"].as_str().unwrap()))),
        "not a JWT",
    );
    // Forged: the signature's first character changed.
    let dot = token.rfind('.').unwrap() + 1;
    let flip = if token.as_bytes()[dot] == b'A' { "B" } else { "A" };
    let forged = format!("{}{flip}{}", &token[..dot], &token[dot + 1..]);
    refused(s.score_as("tokened", Some(&bearer(&forged))), "signature");
    let others = s.token("other", &[]);
    refused(s.score_as("tokened", Some(&bearer(&others))), "signing key is unknown");
    // A token is not a key either.
    refused(s.score_as("keyed", Some(&bearer(&token))), "not valid");
    let short = s.token("tokened", &["--lifetime-seconds", "1"]);
    assert_eq!(s.score_as("tokened", Some(&bearer(&short))).0, 200);
    std::thread::sleep(Duration::from_millis(2100));
    refused(s.score_as("tokened", Some(&bearer(&short))), "expired");
    // get-access-token on a key endpoint says how to turn tokens on.
    let out = s.cli(&["service", "get-access-token", "keyed"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("token auth is off"));

    // Rotating the signing key keeps tokens already given valid; new ones
    // are signed with the new key.
    let rotated = s.cli_json(&["service", "rotate-token-key", "tokened"]);
    assert!(rotated["kid"].is_string(), "{rotated}");
    assert_eq!(s.score_as("tokened", Some(&bearer(&token))).0, 200, "an old token after rotation");
    let fresh = s.token("tokened", &[]);
    assert_eq!(s.score_as("tokened", Some(&bearer(&fresh))).0, 200);

    // Every admin route: only the admin token opens it; no scoring key or
    // token does.
    let admin = bearer(&s.admin_token());
    let routes: &[(&str, &str)] = &[
        ("GET", "/admin/v1/endpoints"),
        ("POST", "/admin/v1/endpoints"),
        ("GET", "/admin/v1/endpoints/keyed"),
        ("PATCH", "/admin/v1/endpoints/keyed"),
        ("DELETE", "/admin/v1/endpoints/nothing-here"),
        ("GET", "/admin/v1/endpoints/keyed/keys"),
        ("POST", "/admin/v1/endpoints/keyed/regen-key"),
        ("POST", "/admin/v1/endpoints/tokened/token"),
        ("POST", "/admin/v1/endpoints/tokened/rotate-token-key"),
        ("GET", "/admin/v1/endpoints/keyed/logs"),
        ("GET", "/admin/v1/endpoints/keyed/versions"),
        ("POST", "/admin/v1/endpoints/keyed/versions"),
        ("GET", "/admin/v1/endpoints/keyed/versions/v1"),
        ("PATCH", "/admin/v1/endpoints/keyed/versions/v1"),
        ("PUT", "/admin/v1/endpoints/keyed/versions/v1"),
        ("DELETE", "/admin/v1/endpoints/keyed/versions/v1"),
        ("GET", "/admin/v1/endpoints/keyed/versions/v1/logs"),
        ("GET", "/admin/v1/models"),
        ("POST", "/admin/v1/models"),
        ("GET", "/admin/v1/models/iris:1"),
        ("DELETE", "/admin/v1/models/iris:1"),
        ("POST", "/admin/v1/blobs"),
        ("GET", "/metrics"),
    ];
    let token_now = s.token("tokened", &[]);
    let keyed_now = s.cli_json(&["service", "get-keys", "keyed"]);
    let wrong: Vec<Option<String>> = vec![
        None,
        Some(bearer(keyed_now["primaryKey"].as_str().unwrap())),
        Some(bearer(keyed_now["secondaryKey"].as_str().unwrap())),
        Some(bearer(&token_now)),
        Some("Bearer ".into()),
        Some(format!("Basic {}", s.admin_token())),
    ];
    for (method, path) in routes {
        for w in &wrong {
            let mut h = vec![];
            if let Some(a) = w {
                h.push(("Authorization", a.as_str()));
            }
            let (status, _, body) = s.request(method, path, &h, b"{}");
            assert_eq!(status, 401, "{method} {path} with {w:?}: {body}");
        }
        // The admin token gets past auth (whatever the route then says to
        // this empty body). Deletes are left out so the server stays whole.
        if *method != "DELETE" {
            let (status, _, body) = s.request(method, path, &[("Authorization", &admin)], b"{}");
            assert_ne!(status, 401, "{method} {path} with the admin token: {body}");
        }
    }

    // Keys never appear in show or logs.
    let show = s.cli_ok(&["service", "show", "keyed", "--json"]);
    let logs = s.cli_ok(&["service", "logs", "keyed"]);
    let keys_now = s.cli_json(&["service", "get-keys", "keyed"]);
    for k in [keys_now["primaryKey"].as_str().unwrap(), keys_now["secondaryKey"].as_str().unwrap()] {
        assert!(!show.contains(k) && !logs.contains(k), "a key is shown");
    }
    let show: serde_json::Value = serde_json::from_str(&show).unwrap();
    assert_eq!(show["auth"]["mode"], "key", "{show}");

    // Keys, modes and signing keys survive a restart; so do tokens given.
    let data = s.kill();
    let s = Server::start_in(data, &[]);
    assert_eq!(s.score_as("keyed", Some(&bearer(keys_now["primaryKey"].as_str().unwrap()))).0, 200);
    assert_eq!(s.score_as("tokened", Some(&bearer(&fresh))).0, 200);
    assert_eq!(s.score_as("open", None).0, 200);
    refused(s.score_as("keyed", None), "Bearer <key>");
}

#[test]
fn auth_settings_from_a_deployment_config_and_azure_mls_file() {
    let s = Server::start(&[]);
    let given = "a-given-primary-key-0123456789";
    s.deploy_ok(
        "given",
        iris_rust(),
        &[&model()],
        Some(serde_json::json!({"primary_key": given, "num_replicas": 1})),
    );
    assert_eq!(s.score_as("given", Some(&bearer(given))).0, 200);
    // The key went to the endpoint, not into the version's stored config.
    let show = s.cli_ok(&["service", "show", "given", "--json"]);
    assert!(!show.contains(given), "{show}");
    // Azure ML's camelCase names: tokenAuthEnabled turns key auth off.
    let dir = tempfile::tempdir().unwrap();
    let dc = dir.path().join("deploymentconfig.json");
    std::fs::write(&dc, r#"{"computeType": "aks", "authEnabled": false, "tokenAuthEnabled": true}"#).unwrap();
    let out = s.cli(&[
        "deploy",
        "--name",
        "az",
        "--module",
        iris_rust().to_str().unwrap(),
        "--model",
        model().to_str().unwrap(),
        "--dc",
        dc.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("mapped tokenAuthEnabled -> token_auth_enabled"), "{err}");
    refused(s.score_as("az", None), "Bearer <token>");
    let t = s.token("az", &[]);
    assert_eq!(s.score_as("az", Some(&bearer(&t))).0, 200);
    // Both on is refused with the rule.
    let out = s.cli(&["service", "update", "az", "--auth-enabled", "--token-auth-enabled"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot both be true"));
    // Turning auth off takes effect at once.
    s.cli_ok(&[
        "service",
        "update",
        "az",
        "--auth-enabled",
        "false",
        "--token-auth-enabled",
        "false",
    ]);
    assert_eq!(s.score_as("az", None).0, 200);
}
