//! The internal scoring protocol between a router and a node.
//!
//! `POST /internal/v1/score` over HTTP/2 cleartext (prior knowledge; or
//! HTTP/1.1 keep-alive when the router is asked to), the body as the client
//! sent it, and these headers:
//! - `x-wasmscore-endpoint`, `x-wasmscore-version`: the names the router
//!   routed by (the node serves one version; it logs a mismatch);
//! - `x-wasmscore-deadline-ms`: what is left of the scoring deadline when
//!   the router sends it (a node refuses a request whose deadline passed);
//! - `content-type`, and the W3C trace context (`traceparent`,
//!   `tracestate`) as the client sent them. Nothing else of the client's
//!   request crosses: its key or token stays at the router.
//!
//! Every response carries `x-wasmscore-load` (the node's busy instances,
//! queued requests, replicas and instances per replica), so the router sees
//! each node's load without polling, and `x-wasmscore-outcome`:
//! - `ok`: the module's answer (status 200, its content type and body);
//! - `error`: the request got no answer; the body is the `ScoreError` as
//!   JSON, so the client sees the same error as under `up` (status 500);
//! - `draining`: the node is shutting down (or not ready yet) and did not
//!   start the request (status 503): the router sends it to another node.
//!
//! A node's ready answer (`GET /v2/health/ready`, 200) says what it serves
//! ([`Identity`]): the router sends a version's requests only to nodes
//! whose identity agrees with what it routes there ([`Identity::disagrees`]).

use wasmscore_replica::ScoreError;

pub const SCORE_PATH: &str = "/internal/v1/score";
pub const READY_PATH: &str = "/v2/health/ready";
pub const ENDPOINT: &str = "x-wasmscore-endpoint";
pub const VERSION: &str = "x-wasmscore-version";
pub const DEADLINE_MS: &str = "x-wasmscore-deadline-ms";
pub const LOAD: &str = "x-wasmscore-load";
pub const OUTCOME: &str = "x-wasmscore-outcome";
/// Set when the body carries tensors after it (an Open Inference Protocol
/// call): `body length,JSON length`, as `wasmscore_oip::pack` frames them.
pub const TENSORS: &str = "x-wasmscore-tensors";
/// The trace context headers passed through as they are.
pub const TRACE_HEADERS: [&str; 2] = ["traceparent", "tracestate"];

/// A node's load when it answered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Load {
    /// Instances running a call.
    pub busy: u32,
    /// Requests waiting for an instance.
    pub queued: u32,
    /// Replicas that ran init() (a replica is `max_concurrent` instances).
    pub replicas: u32,
    pub max_concurrent: u32,
}

impl Load {
    pub fn encode(&self) -> String {
        format!(
            "busy={} queued={} replicas={} max_concurrent={}",
            self.busy, self.queued, self.replicas, self.max_concurrent
        )
    }

    /// None for anything but the four fields.
    pub fn parse(s: &str) -> Option<Load> {
        let mut load = Load::default();
        let mut seen = 0;
        for part in s.split_ascii_whitespace() {
            let (k, v) = part.split_once('=')?;
            let v: u32 = v.parse().ok()?;
            match k {
                "busy" => load.busy = v,
                "queued" => load.queued = v,
                "replicas" => load.replicas = v,
                "max_concurrent" => load.max_concurrent = v,
                _ => return None,
            }
            seen += 1;
        }
        (seen == 4).then_some(load)
    }

    /// Busy instances plus waiting requests: what the autoscaler samples.
    pub fn demand(&self) -> u32 {
        self.busy + self.queued
    }
}

/// What `x-wasmscore-outcome` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    Error,
    Draining,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Error => "error",
            Outcome::Draining => "draining",
        }
    }
    pub fn parse(s: &str) -> Option<Outcome> {
        match s {
            "ok" => Some(Outcome::Ok),
            "error" => Some(Outcome::Error),
            "draining" => Some(Outcome::Draining),
            _ => None,
        }
    }
}

/// What a node serves, as its ready answer says it.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Identity {
    /// The names it was started with (`--endpoint`, `--version`); none for
    /// a node not given them, whose names nobody can check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The digest of the artifact it pulled (`sha256:...`); none for a
    /// module from disk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact: Option<String>,
}

impl Identity {
    /// Why a node with this identity must not get `endpoint`/`version`'s
    /// requests, if it must not: it was started for other names, or it
    /// serves another artifact than `artifact` (a digest), when one is named.
    pub fn disagrees(&self, endpoint: &str, version: &str, artifact: Option<&str>) -> Option<String> {
        let named = |name: &Option<String>, want: &str| name.as_deref().is_none_or(|n| n == want);
        if !named(&self.endpoint, endpoint) || !named(&self.version, version) {
            let or_unnamed = |n: &Option<String>| n.as_deref().unwrap_or("(any)").to_string();
            return Some(format!(
                "it serves {}/{}, and this router routes {endpoint}/{version} to it",
                or_unnamed(&self.endpoint),
                or_unnamed(&self.version)
            ));
        }
        match (artifact, self.artifact.as_deref()) {
            (Some(want), Some(got)) if want != got => Some(format!(
                "it serves artifact {got}, and this router routes {endpoint}/{version}'s artifact {want} to it"
            )),
            (Some(want), None) => Some(format!(
                "it serves a module from disk, not an artifact, and this router routes {endpoint}/{version}'s artifact {want} to it"
            )),
            _ => None,
        }
    }
}

pub fn encode_error(e: &ScoreError) -> Vec<u8> {
    serde_json::to_vec(e).expect("a ScoreError serializes")
}

pub fn decode_error(body: &[u8]) -> Option<ScoreError> {
    serde_json::from_slice(body).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmscore_engine::CallError;

    #[test]
    fn a_node_agrees_when_its_names_and_artifact_match_or_were_not_given() {
        let d1 = "sha256:".to_string() + &"1".repeat(64);
        let d2 = "sha256:".to_string() + &"2".repeat(64);
        let named = Identity {
            endpoint: Some("iris".into()),
            version: Some("v1".into()),
            artifact: Some(d1.clone()),
        };
        assert_eq!(named.disagrees("iris", "v1", None), None);
        assert_eq!(named.disagrees("iris", "v1", Some(&d1)), None);
        let other_version = named.disagrees("iris", "v2", None).expect("another version");
        assert!(
            other_version.contains("serves iris/v1") && other_version.contains("routes iris/v2"),
            "{other_version}"
        );
        assert!(named.disagrees("wine", "v1", None).is_some());
        let other_artifact = named.disagrees("iris", "v1", Some(&d2)).expect("another artifact");
        assert!(other_artifact.contains(&d1) && other_artifact.contains(&d2), "{other_artifact}");
        // Unnamed nodes (started with neither flag) are not checked by name.
        let unnamed = Identity::default();
        assert_eq!(unnamed.disagrees("any", "thing", None), None);
        let from_disk = unnamed.disagrees("iris", "v1", Some(&d1)).expect("no artifact");
        assert!(from_disk.contains("a module from disk"), "{from_disk}");
        // Only what was given crosses the wire.
        let one = Identity {
            version: Some("v1".into()),
            ..Identity::default()
        };
        assert_eq!(serde_json::to_value(&one).unwrap(), serde_json::json!({"version": "v1"}));
        let read: Identity = serde_json::from_value(serde_json::json!({"ready": true, "version": "v1"})).unwrap();
        assert_eq!(read, one);
    }

    #[test]
    fn load_round_trips_and_refuses_anything_else() {
        let l = Load {
            busy: 3,
            queued: 7,
            replicas: 1,
            max_concurrent: 4,
        };
        assert_eq!(Load::parse(&l.encode()), Some(l));
        assert_eq!(l.demand(), 10);
        for bad in [
            "",
            "busy=1",
            "busy=1 queued=2 replicas=3 max_concurrent=x",
            "busy=1 queued=2 replicas=3 other=4",
        ] {
            assert_eq!(Load::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn errors_cross_as_they_are() {
        for e in [
            ScoreError::Call(CallError::BadInput("malformed JSON".into())),
            ScoreError::Call(CallError::Timeout(300)),
            ScoreError::Overloaded { waited_ms: 500 },
            ScoreError::Unavailable("no replica".into()),
        ] {
            let back = decode_error(&encode_error(&e)).unwrap();
            assert_eq!(back, e);
            assert_eq!(back.to_string(), e.to_string());
        }
        assert_eq!(decode_error(b"<html>"), None);
    }
}
