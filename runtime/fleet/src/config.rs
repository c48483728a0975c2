//! router.json: what the router serves. Raw (as written), then checked by
//! the rollout rules `up` uses, with the same messages.
//!
//! ```json
//! {"endpoints": [{"name": "iris",
//!   "auth": {"mode": "key", "primary_key": "...", "secondary_key": "..."},
//!   "versions": [{"name": "v1", "traffic": 20, "default": true, "control": false, "mirror": 0,
//!                 "nodes": ["127.0.0.1:9001", "127.0.0.1:9002"],
//!                 "artifact": "sha256:...",
//!                 "config": {"scoring_timeout_ms": 60000, "autoscale_max_replicas": 4}}]}]}
//! ```
//!
//! `config` is the version's deployment config, with `up`'s keys, defaults
//! and refusal of unknown keys; the router uses its scoring timeout and
//! autoscale settings (the rest is the nodes' business).
//!
//! `artifact` (optional) is the digest its nodes must serve, alone or as
//! the reference they pulled (`HOST:PORT/REPO@sha256:...`): a node that
//! serves another one is not ready here. A node started with `--endpoint`
//! and `--version` must have this endpoint's and version's names.

use serde::Deserialize;
use wasmscore_rules::config::{DeploymentConfig, Resolved};
use wasmscore_rules::rollout::{self, Rollout};

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FleetSpec {
    pub endpoints: Vec<EndpointSpec>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EndpointSpec {
    pub name: String,
    pub auth: AuthSpec,
    pub versions: Vec<VersionSpec>,
}

/// Who may score an endpoint. Debug leaves the keys out.
#[derive(Clone, Deserialize, PartialEq)]
#[serde(tag = "mode", rename_all = "lowercase", deny_unknown_fields)]
pub enum AuthSpec {
    Key {
        primary_key: String,
        secondary_key: String,
    },
    /// Tokens (HS256, audience = the endpoint) signed by one of these keys;
    /// the last one signs what `wasmscore router-token` gives, all verify
    /// (keep a rotated-out key listed as long as its tokens may live).
    Token {
        signing_keys: Vec<SigningKeySpec>,
    },
    None,
}

impl AuthSpec {
    /// An endpoint's `auth` as router.json gives it, checked.
    pub fn parse(v: serde_json::Value) -> Result<AuthSpec, String> {
        let auth: AuthSpec = serde_json::from_value(v).map_err(|e| format!("auth: {e}"))?;
        auth.check()?;
        Ok(auth)
    }

    fn check(&self) -> Result<(), String> {
        match self {
            AuthSpec::Key {
                primary_key,
                secondary_key,
            } if primary_key.len() < 16 || secondary_key.len() < 16 => Err("keys must be at least 16 characters".into()),
            AuthSpec::Token { signing_keys } if signing_keys.is_empty() => Err("token auth needs at least one signing key".into()),
            AuthSpec::Token { signing_keys } => {
                for k in signing_keys {
                    if k.kid.is_empty() || k.kid.len() > 64 {
                        return Err("a signing key's kid is 1-64 characters".into());
                    }
                    if decode_hex(&k.secret).is_none_or(|b| b.len() < 32) {
                        return Err(format!("signing key {:?}: the secret must be hex, at least 32 bytes", k.kid));
                    }
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

#[derive(Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SigningKeySpec {
    pub kid: String,
    /// Hex, at least 32 bytes.
    pub secret: String,
    /// When it was rotated out (Unix seconds): it then verifies only the
    /// tokens it signed before, so a leaked old secret cannot sign new ones.
    #[serde(default)]
    pub retired_at: Option<u64>,
}

impl SigningKeySpec {
    pub fn key(&self) -> wasmscore_router::auth::SigningKey {
        wasmscore_router::auth::SigningKey {
            kid: self.kid.clone(),
            secret: decode_hex(&self.secret).unwrap_or_default(),
            retired_at: self.retired_at,
        }
    }
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

impl std::fmt::Debug for AuthSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AuthSpec::Key { .. } => f.write_str("Key(<redacted>)"),
            AuthSpec::Token { signing_keys } => write!(f, "Token({} keys, <redacted>)", signing_keys.len()),
            AuthSpec::None => f.write_str("None"),
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct VersionSpec {
    pub name: String,
    #[serde(default)]
    pub traffic: u32,
    #[serde(default)]
    pub default: bool,
    #[serde(default)]
    pub control: bool,
    #[serde(default)]
    pub mirror: u32,
    /// host:port of each node that serves it.
    #[serde(default)]
    pub nodes: Vec<String>,
    #[serde(default)]
    pub config: serde_json::Value,
    /// The artifact its nodes must serve: a digest, or a reference by digest.
    #[serde(default)]
    pub artifact: Option<String>,
}

impl VersionSpec {
    /// The digest `artifact` names (`sha256:...`), if it names one.
    pub fn artifact_digest(&self) -> Option<&str> {
        let a = self.artifact.as_deref()?;
        Some(a.rsplit_once('@').map_or(a, |(_, digest)| digest))
    }

    pub fn rollout(&self) -> Rollout {
        Rollout {
            name: self.name.clone(),
            traffic: self.traffic,
            is_default: self.default,
            is_control: self.control,
            mirror: self.mirror,
        }
    }

    pub fn resolved(&self) -> Result<Resolved, String> {
        DeploymentConfig::parse(&self.config)
            .and_then(|c| c.resolve())
            .map_err(|e| e.to_string())
    }
}

/// Nodes per version: the balancer keeps which nodes a request tried in one
/// 64-bit word.
pub const MAX_NODES: usize = 64;

fn valid_name(kind: &str, s: &str) -> Result<(), String> {
    wasmscore_rules::valid_name(kind, s).map_err(|e| e.to_string())
}

impl FleetSpec {
    /// Parses and checks router.json; the message names the endpoint and
    /// the rule.
    pub fn parse(bytes: &[u8]) -> Result<FleetSpec, String> {
        let spec: FleetSpec = serde_json::from_slice(bytes).map_err(|e| format!("router config: {e}"))?;
        spec.check()?;
        Ok(spec)
    }

    /// router.json as a person writes it: an endpoint's one serving version
    /// is its default, said or not (as `up` makes an endpoint's first
    /// version its default); of two or more, which is the default must be
    /// said. (An Endpoint resource on Kubernetes must say it: the operator
    /// and the router read those with [`FleetSpec::parse`].)
    pub fn parse_file(bytes: &[u8]) -> Result<FleetSpec, String> {
        let mut spec: FleetSpec = serde_json::from_slice(bytes).map_err(|e| format!("router config: {e}"))?;
        for ep in &mut spec.endpoints {
            let mut serving = ep.versions.iter_mut().filter(|v| v.mirror == 0);
            if let (Some(only), None) = (serving.next(), serving.next()) {
                only.default = true;
            }
        }
        spec.check()?;
        Ok(spec)
    }

    pub fn check(&self) -> Result<(), String> {
        let mut names = std::collections::HashSet::new();
        for ep in &self.endpoints {
            valid_name("endpoint", &ep.name)?;
            if !names.insert(ep.name.as_str()) {
                return Err(format!("router config: endpoint {:?} is listed twice", ep.name));
            }
            let at = |m: String| format!("router config: endpoint {:?}: {m}", ep.name);
            ep.auth.check().map_err(at)?;
            let mut versions = std::collections::HashSet::new();
            for v in &ep.versions {
                valid_name("version", &v.name).map_err(at)?;
                if !versions.insert(v.name.as_str()) {
                    return Err(at(format!("version {:?} is listed twice", v.name)));
                }
                if v.traffic > 100 {
                    return Err(at(format!(
                        "version {:?}: traffic is a percentage in 0..=100, got {}",
                        v.name, v.traffic
                    )));
                }
                if v.mirror > rollout::MAX_MIRROR_PERCENT {
                    return Err(at(format!(
                        "version {:?}: a mirror copies at most {}% of live traffic, got {}",
                        v.name,
                        rollout::MAX_MIRROR_PERCENT,
                        v.mirror
                    )));
                }
                if v.nodes.len() > MAX_NODES {
                    return Err(at(format!(
                        "version {:?} lists {} nodes; a version has at most {MAX_NODES} (run more replicas per node instead)",
                        v.name,
                        v.nodes.len()
                    )));
                }
                for n in &v.nodes {
                    let ok = n.rsplit_once(':').is_some_and(|(h, p)| {
                        !h.is_empty()
                            && p.parse::<u16>().is_ok_and(|p| p > 0)
                            && h.chars().all(|c| c.is_ascii_alphanumeric() || "-.[]:".contains(c))
                    }) && format!("http://{n}/").parse::<http_uri::Uri>().is_ok();
                    if !ok {
                        return Err(at(format!("version {:?}: node {n:?} is not host:port", v.name)));
                    }
                }
                // Twice would double its share and name two series alike in
                // /metrics.
                if let Some(n) = v.nodes.iter().enumerate().find_map(|(i, n)| v.nodes[..i].contains(n).then_some(n)) {
                    return Err(at(format!("version {:?}: node {n:?} is listed twice", v.name)));
                }
                if let Some(digest) = v.artifact_digest() {
                    let hex = digest.strip_prefix("sha256:").unwrap_or_default();
                    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
                        return Err(at(format!(
                            "version {:?}: artifact {:?} names no digest (sha256: and 64 hex digits, alone or after @): nodes are checked by digest, as a tag can move",
                            v.name,
                            v.artifact.as_deref().unwrap_or_default()
                        )));
                    }
                }
                v.resolved().map_err(|e| at(format!("version {:?}: {e}", v.name)))?;
            }
            let rollouts: Vec<Rollout> = ep.versions.iter().map(VersionSpec::rollout).collect();
            rollout::check(&rollouts).map_err(|e| at(e.to_string()))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(versions: &str) -> Result<FleetSpec, String> {
        FleetSpec::parse(format!(r#"{{"endpoints": [{{"name": "iris", "auth": {{"mode": "none"}}, "versions": {versions}}}]}}"#).as_bytes())
    }

    #[test]
    fn the_rules_of_up_with_its_messages() {
        assert!(spec(r#"[{"name": "v1", "traffic": 20, "default": true, "nodes": ["127.0.0.1:9001"]}]"#).is_ok());
        let e = spec(r#"[{"name": "a", "traffic": 70, "default": true}, {"name": "b", "traffic": 40}]"#).unwrap_err();
        assert!(e.contains("traffic percentages add up to 110%"), "{e}");
        let e = spec(r#"[{"name": "a"}, {"name": "b"}]"#).unwrap_err();
        assert!(e.contains("exactly one default"), "{e}");
        // One serving version is the default without saying so, a mirror beside it or not.
        let one = FleetSpec::parse_file(
            br#"{"endpoints": [{"name": "iris", "auth": {"mode": "none"}, "versions": [{"name": "only"}, {"name": "m", "mirror": 10}]}]}"#,
        )
        .unwrap();
        assert!(spec(r#"[{"name": "only"}]"#).is_err(), "a resource must name its default");
        let defaults: Vec<bool> = one.endpoints[0].versions.iter().map(|v| v.default).collect();
        assert_eq!(defaults, [true, false]);
        let e = spec(r#"[{"name": "a", "default": true, "control": true}, {"name": "b", "control": true}]"#).unwrap_err();
        assert!(e.contains("at most one version is the control"), "{e}");
        for bad in ["nohost", "a b:9001", "host/x:9001", ":9001", "h:0", "h:99999", "hé:80"] {
            let e = spec(&format!(r#"[{{"name": "a", "default": true, "nodes": ["{bad}"]}}]"#)).unwrap_err();
            assert!(e.contains("not host:port"), "{bad}: {e}");
        }
        // A rotated-out key says when, and its policy key carries it.
        let secret = "ab".repeat(32);
        let tokens = FleetSpec::parse_file(
            format!(
                r#"{{"endpoints": [{{"name": "iris", "auth": {{"mode": "token", "signing_keys": [
                    {{"kid": "old", "secret": "{secret}", "retired_at": 1700000000}}, {{"kid": "new", "secret": "{secret}"}}]}},
                    "versions": [{{"name": "v1", "default": true}}]}}]}}"#
            )
            .as_bytes(),
        )
        .unwrap();
        let AuthSpec::Token { signing_keys } = &tokens.endpoints[0].auth else {
            panic!("token auth")
        };
        let retired: Vec<Option<u64>> = signing_keys.iter().map(|k| k.key().retired_at).collect();
        assert_eq!(retired, [Some(1_700_000_000), None]);
        let e = spec(r#"[{"name": "a", "default": true, "nodes": ["h:1", "h:2", "h:1"]}]"#).unwrap_err();
        assert!(e.contains(r#"node "h:1" is listed twice"#), "{e}");
        let e = spec(r#"[{"name": "a", "default": true, "config": {"scoring_timeout": 5}}]"#).unwrap_err();
        assert!(e.contains("unknown field"), "{e}");
        let e = spec(r#"[{"name": "a", "default": true, "weight": 5}]"#).unwrap_err();
        assert!(e.contains("unknown field `weight`"), "{e}");
        let digest = format!("sha256:{}", "ab".repeat(32));
        for good in [digest.clone(), format!("127.0.0.1:5000/iris@{digest}")] {
            let v = &spec(&format!(r#"[{{"name": "a", "default": true, "artifact": "{good}"}}]"#))
                .unwrap()
                .endpoints[0]
                .versions[0];
            assert_eq!(v.artifact_digest(), Some(digest.as_str()));
        }
        for bad in [
            "127.0.0.1:5000/iris:v1",
            "sha256:abc",
            "sha512:00",
            &format!("sha256:{}", "AB".repeat(32)),
        ] {
            let e = spec(&format!(r#"[{{"name": "a", "default": true, "artifact": "{bad}"}}]"#)).unwrap_err();
            assert!(e.contains("names no digest"), "{bad}: {e}");
        }
        let seven: Vec<String> = (0..7).map(|i| format!(r#"{{"name": "v{i}", "default": {}}}"#, i == 0)).collect();
        let e = spec(&format!("[{}]", seven.join(","))).unwrap_err();
        assert!(e.contains("at most 6 versions"), "{e}");
    }

    #[test]
    fn keys_are_checked_and_never_printed() {
        let short = FleetSpec::parse(br#"{"endpoints": [{"name": "e", "auth": {"mode": "key", "primary_key": "short", "secondary_key": "also-short"}, "versions": []}]}"#);
        assert!(short.unwrap_err().contains("at least 16"));
        let ok = FleetSpec::parse(br#"{"endpoints": [{"name": "e", "auth": {"mode": "key", "primary_key": "0123456789abcdef-p", "secondary_key": "0123456789abcdef-s"}, "versions": []}]}"#).unwrap();
        assert!(!format!("{ok:?}").contains("0123456789abcdef"));
    }
}
