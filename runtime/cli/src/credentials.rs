//! A registry login, where docker keeps it: `$DOCKER_CONFIG/config.json`
//! (or `~/.docker/config.json`), as `docker login`, `az acr login` and
//! the cloud tools write it.
//!
//! As docker looks it up: a credential helper named for the registry in
//! `credHelpers`, else the store named by `credsStore`, else the
//! registry's entry in `auths` (`auth`, base64 "user:password", or
//! `username` and `password`, or an `identitytoken`). A helper is the
//! program `docker-credential-NAME`: `get`, the registry on stdin, JSON
//! `{"Username", "Secret"}` on stdout. A user named `<token>` means the
//! secret is an identity token (an OAuth2 refresh token, as a helper gives
//! for ACR or docker stores after a login that asked for one), which
//! [`crate::artifact`] trades for an access token at the registry's token
//! service. No login found: anonymous.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};

/// How to log in to one registry.
#[derive(Clone, PartialEq)]
pub enum Login {
    Anonymous,
    Basic {
        user: String,
        password: String,
    },
    /// An OAuth2 refresh token, traded for an access token per scope.
    Identity(String),
}

impl std::fmt::Debug for Login {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Login::Anonymous => write!(f, "anonymous"),
            Login::Basic { user, .. } => write!(f, "user {user:?}"),
            Login::Identity(_) => write!(f, "an identity token"),
        }
    }
}

/// Where docker's config is, and its text if there is one.
fn config() -> Result<Option<(PathBuf, serde_json::Value)>> {
    let dir = std::env::var_os("DOCKER_CONFIG")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker")));
    let Some(path) = dir.map(|d| d.join("config.json")) else {
        return Ok(None);
    };
    let Ok(bytes) = std::fs::read(&path) else {
        return Ok(None);
    };
    let cfg = serde_json::from_slice(&bytes).with_context(|| format!("{}: not JSON", path.display()))?;
    Ok(Some((path, cfg)))
}

/// Docker Hub's key in docker's config, as `docker login` writes it and
/// as its credential helpers are asked for it.
const DOCKER_HUB: &str = "https://index.docker.io/v1/";

/// The key docker files `registry`'s login under.
fn key_of(registry: &str) -> &str {
    match registry {
        "docker.io" | "index.docker.io" | "registry-1.docker.io" => DOCKER_HUB,
        other => other,
    }
}

/// The host (and port) of a key in `auths`: docker writes some with a
/// scheme and a path (Docker Hub's, older logins' `https://host/v1/`).
fn host_of(key: &str) -> &str {
    let key = key.strip_prefix("https://").or_else(|| key.strip_prefix("http://")).unwrap_or(key);
    key.split('/').next().unwrap_or(key)
}

/// The login for `registry` (HOST[:PORT]).
pub fn for_registry(registry: &str) -> Result<Login> {
    let Some((path, cfg)) = config()? else {
        return Ok(Login::Anonymous);
    };
    let key = key_of(registry);
    let helper = cfg["credHelpers"][key]
        .as_str()
        .or_else(|| cfg["credHelpers"][registry].as_str())
        .or_else(|| cfg["credsStore"].as_str())
        .filter(|h| !h.is_empty());
    if let Some(helper) = helper {
        return from_helper(helper, key);
    }
    let host = host_of(key);
    let entry = cfg["auths"].as_object().and_then(|auths| {
        auths
            .get(key)
            .or_else(|| auths.iter().find(|(k, _)| host_of(k) == host).map(|(_, e)| e))
    });
    let Some(entry) = entry.filter(|e| e.is_object()) else {
        return Ok(Login::Anonymous);
    };
    from_entry(entry).with_context(|| format!("{}: auths.{registry}", path.display()))
}

fn from_entry(entry: &serde_json::Value) -> Result<Login> {
    use base64::Engine;
    if let Some(token) = entry["identitytoken"].as_str().filter(|t| !t.is_empty()) {
        return Ok(Login::Identity(token.to_string()));
    }
    if let Some(auth) = entry["auth"].as_str().filter(|a| !a.is_empty()) {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(auth)
            .context("auth is not base64")?;
        let text = String::from_utf8(decoded).context("auth is not UTF-8")?;
        let (user, password) = text.split_once(':').context("auth is not user:password")?;
        return Ok(Login::Basic {
            user: user.to_string(),
            password: password.to_string(),
        });
    }
    match (entry["username"].as_str(), entry["password"].as_str()) {
        (Some(user), Some(password)) => Ok(Login::Basic {
            user: user.to_string(),
            password: password.to_string(),
        }),
        _ => Ok(Login::Anonymous),
    }
}

/// How long a credential helper may take (one that waits for a login or
/// a locked keychain would hold a node's pull forever).
const HELPER_TIMEOUT: Duration = Duration::from_secs(30);

/// Asks `docker-credential-{helper}` for the login filed under `key`.
fn from_helper(helper: &str, key: &str) -> Result<Login> {
    let program = format!("docker-credential-{helper}");
    let mut child = Command::new(&program)
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {program} (docker's config names the credential helper {helper:?})"))?;
    if let Some(mut stdin) = child.stdin.take() {
        // A helper that exits without reading gives a broken pipe: its
        // exit status says what went wrong.
        let _ = stdin.write_all(key.as_bytes());
    }
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = match rx.recv_timeout(HELPER_TIMEOUT) {
        Ok(out) => out.with_context(|| format!("running {program}"))?,
        Err(_) => {
            // SAFETY: kill(2) of the helper, which had not answered; its
            // thread reaps it once it dies.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            bail!("{program} get {key} gave no answer in {} s", HELPER_TIMEOUT.as_secs());
        }
    };
    if !out.status.success() {
        // The helpers' protocol: no login stored for this registry.
        if String::from_utf8_lossy(&out.stdout).contains("credentials not found") {
            return Ok(Login::Anonymous);
        }
        // Its first line of stderr only: what a helper prints may hold
        // the secret it was asked for.
        let stderr = String::from_utf8_lossy(&out.stderr);
        let said: String = stderr.lines().next().unwrap_or_default().chars().take(200).collect();
        bail!("{program} get {key}: {}: {said}", out.status);
    }
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout).with_context(|| format!("{program} get {key}: not JSON"))?;
    let user = answer["Username"].as_str().unwrap_or_default();
    let secret = answer["Secret"].as_str().unwrap_or_default();
    Ok(match (user, secret) {
        (_, "") => Login::Anonymous,
        ("<token>", token) => Login::Identity(token.to_string()),
        (user, password) => Login::Basic {
            user: user.to_string(),
            password: password.to_string(),
        },
    })
}

/// A `WWW-Authenticate: Bearer realm="...",service="...",scope="..."`
/// challenge's parameters; None for another scheme.
pub fn bearer_challenge(header: &str) -> Option<Vec<(String, String)>> {
    let rest = header.trim();
    let (scheme, params) = rest.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let mut out = Vec::new();
    let mut s = params.trim();
    while !s.is_empty() {
        let (key, after) = s.split_once('=')?;
        let key = key.trim().trim_start_matches(',').trim().to_ascii_lowercase();
        let after = after.trim_start();
        let (value, next) = if let Some(quoted) = after.strip_prefix('"') {
            let end = quoted.find('"')?;
            (&quoted[..end], &quoted[end + 1..])
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (&after[..end], &after[end..])
        };
        out.push((key, value.to_string()));
        s = next.trim_start().trim_start_matches(',').trim_start();
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn an_entry_gives_a_password_or_an_identity_token() {
        let basic = Login::Basic {
            user: "ci".into(),
            password: "pw:with:colons".into(),
        };
        assert_eq!(from_entry(&json!({"auth": "Y2k6cHc6d2l0aDpjb2xvbnM="})).unwrap(), basic);
        assert_eq!(from_entry(&json!({"username": "ci", "password": "pw:with:colons"})).unwrap(), basic);
        assert_eq!(
            from_entry(&json!({"auth": "", "identitytoken": "rt-1"})).unwrap(),
            Login::Identity("rt-1".into())
        );
        assert_eq!(from_entry(&json!({})).unwrap(), Login::Anonymous);
        assert!(from_entry(&json!({"auth": "not base64!"})).is_err());
        // Secrets stay out of logs.
        assert_eq!(format!("{basic:?}"), "user \"ci\"");
    }

    #[test]
    fn challenges_are_read_as_registries_send_them() {
        let c = bearer_challenge(
            r#"Bearer realm="https://auth.example.com/token",service="registry.example.com",scope="repository:a/b:pull,push""#,
        )
        .unwrap();
        assert_eq!(
            c,
            vec![
                ("realm".into(), "https://auth.example.com/token".into()),
                ("service".into(), "registry.example.com".into()),
                ("scope".into(), "repository:a/b:pull,push".into()),
            ]
        );
        let c = bearer_challenge("bearer realm=http://127.0.0.1:1/token, service=x").unwrap();
        assert_eq!(c[0], ("realm".into(), "http://127.0.0.1:1/token".into()));
        assert_eq!(c[1], ("service".into(), "x".into()));
        assert_eq!(bearer_challenge(r#"Basic realm="registry""#), None);
    }

    #[test]
    fn docker_hub_and_auths_keys_are_matched_as_docker_files_them() {
        assert_eq!(key_of("docker.io"), DOCKER_HUB);
        assert_eq!(key_of("index.docker.io"), DOCKER_HUB);
        assert_eq!(key_of("ghcr.io"), "ghcr.io");
        assert_eq!(host_of(DOCKER_HUB), "index.docker.io");
        assert_eq!(host_of("https://myregistry.azurecr.io"), "myregistry.azurecr.io");
        assert_eq!(host_of("http://127.0.0.1:5000/v2/"), "127.0.0.1:5000");
        assert_eq!(host_of("127.0.0.1:5000"), "127.0.0.1:5000");
    }
}
