//! Secrets at rest: the whole local flow under a permissive umask leaves
//! nothing in the data directory that another user can read, and the keys,
//! tokens and signing secrets appear in no file but the database (nor in the
//! log, `show`, `logs` or `/metrics`).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::{hostile, iris_rust, model, root, Launch, Server};

const ROW: &str = r#"{"data": [[5.1, 3.5, 1.4, 0.2]]}"#;

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        out.push(p.clone());
        if std::fs::symlink_metadata(&p).unwrap().is_dir() {
            walk(&p, out);
        }
    }
}

/// The token signing secrets, read from the database itself (they leave it
/// only as signatures).
fn signing_secrets(db: &Path) -> Vec<String> {
    let script = "import json,sqlite3,sys\nc=sqlite3.connect(sys.argv[1])\nfor (k,) in c.execute('SELECT token_keys FROM endpoints'):\n    for t in json.loads(k or '[]'): print(t['secret'])";
    let out = Command::new(root().join(".venv/bin/python"))
        .args(["-c", script])
        .arg(db)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().lines().map(str::to_string).collect()
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

#[test]
fn the_data_directory_is_private_and_secrets_stay_in_the_store() {
    let outside = tempfile::tempdir().unwrap();
    let log = outside.path().join("up.log");
    let how = Launch {
        umask: Some("022"),
        log: Some(log.clone()),
        own_cache: true,
        ..Launch::default()
    };
    let tls = ["--tls-port", "0", "--tls-self-signed"];
    // A data directory that others can read, as `mkdir` makes one under umask 022.
    let data = tempfile::tempdir().unwrap();
    std::fs::set_permissions(data.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let s = Server::launch(data, &tls, &how);
    let said = std::fs::read_to_string(&log).unwrap();
    assert!(said.contains("removed group and world permissions"), "{said}");

    // Key auth, a regenerated key, token auth, a second (rebuilt) version.
    s.deploy_ok("iris", iris_rust(), &[&model()], None);
    let first_keys = s.cli_json(&["service", "get-keys", "iris"]);
    s.cli_ok(&["service", "regen-key", "iris", "--key", "primary"]);
    let dc = outside.path().join("token-dc.json");
    std::fs::write(&dc, r#"{"token_auth_enabled": true}"#).unwrap();
    let (module, model_path) = (iris_rust().to_str().unwrap(), model());
    s.cli_ok(&[
        "deploy",
        "--name",
        "tok",
        "--module",
        module,
        "--model",
        model_path.to_str().unwrap(),
        "--dc",
        dc.to_str().unwrap(),
    ]);
    let token = s.cli_json(&["service", "get-access-token", "tok"])["accessToken"]
        .as_str()
        .unwrap()
        .to_string();
    let bearer = format!("Bearer {token}");
    let auth = [("Authorization", bearer.as_str()), ("Content-Type", "application/json")];
    assert_eq!(s.request("POST", "/api/v1/service/tok/score", &auth, ROW.as_bytes()).0, 200);
    s.cli_ok(&["service", "rotate-token-key", "tok"]);
    let hostile = hostile();
    s.cli_ok(&[
        "version",
        "create",
        "--endpoint",
        "iris",
        "--version",
        "v2",
        "--module",
        hostile.to_str().unwrap(),
        "--traffic",
        "10",
    ]);
    assert_eq!(s.score_with("iris", &[("x-wasmscore-version", "v2")], "hello").0, 200);

    // A restart, then everything still works.
    let data = s.kill();
    let s = Server::launch(data, &tls, &how);
    assert_eq!(s.score("iris", ROW).0, 200);
    assert_eq!(s.request("POST", "/api/v1/service/tok/score", &auth, ROW.as_bytes()).0, 200);
    // The second start found nothing to tighten: what the first run wrote
    // was private from the start.
    let said = std::fs::read_to_string(&log).unwrap();
    assert_eq!(said.matches("removed group and world permissions").count(), 1, "{said}");

    // Nothing in the data directory is open to group or world.
    let mut all = vec![s.data.path().to_path_buf()];
    walk(s.data.path(), &mut all);
    let open: Vec<String> = all
        .iter()
        .filter_map(|p| {
            let mode = std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o777;
            (mode & 0o077 != 0).then(|| format!("{} {mode:o}", p.display()))
        })
        .collect();
    assert!(open.is_empty(), "readable by others: {open:#?}");
    // The walk saw what the flow writes.
    let names: Vec<String> = all
        .iter()
        .map(|p| p.strip_prefix(s.data.path()).unwrap().display().to_string())
        .collect();
    for want in ["state.db", "admin.token", "server.json", "blobs", "cache", "tls/dev-key.pem"] {
        assert!(names.iter().any(|n| n == want), "{want} missing from {names:?}");
    }
    assert!(names.iter().filter(|n| n.starts_with("blobs/")).count() >= 2, "{names:?}");
    assert!(names.iter().any(|n| n.starts_with("cache/")), "{names:?}");

    // The secrets: every key the endpoints have had, the token given and
    // the signing secrets (current and rotated out).
    let mut secrets = vec![token.clone()];
    for name in ["iris", "tok"] {
        let k = s.cli_json(&["service", "get-keys", name]);
        secrets.push(k["primaryKey"].as_str().unwrap().to_string());
        secrets.push(k["secondaryKey"].as_str().unwrap().to_string());
    }
    secrets.push(first_keys["primaryKey"].as_str().unwrap().to_string());
    let signing = signing_secrets(&s.data.path().join("state.db"));
    assert!(signing.len() >= 2, "rotated signing keys: {signing:?}");
    secrets.extend(signing);
    assert!(secrets.iter().all(|x| x.len() >= 16), "{secrets:?}");

    // No file but the database (state.db and its WAL and SHM) holds one,
    // nor the log or what show, logs and /metrics print.
    let mut places: Vec<(String, Vec<u8>)> = all
        .iter()
        .filter(|p| p.is_file() && !p.file_name().unwrap().to_str().unwrap().starts_with("state.db"))
        .map(|p| (p.display().to_string(), std::fs::read(p).unwrap()))
        .collect();
    places.push(("the server's log".into(), std::fs::read(&log).unwrap()));
    for name in ["iris", "tok"] {
        places.push((format!("show {name}"), s.cli_ok(&["service", "show", name, "--json"]).into_bytes()));
        places.push((format!("logs {name}"), s.cli_ok(&["service", "logs", name]).into_bytes()));
    }
    places.push(("/metrics".into(), s.get_admin_text("/metrics").into_bytes()));
    for (place, bytes) in &places {
        for (i, secret) in secrets.iter().enumerate() {
            assert!(!contains(bytes, secret), "secret #{i} is in {place}");
        }
    }
}
