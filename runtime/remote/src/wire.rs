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
//!   start the request (status 503): the router sends it to another node;
//! - `stream`: a decoupled version's call, asked for with `x-wasmscore-responses`
//!   (status 200): the body is [`Frame`]s, the responses as the module
//!   sends them, then its last (its answer or its error).
//!
//! A node's ready answer (`GET /v2/health/ready`, 200) says what it serves
//! ([`Identity`]): the router sends a version's requests only to nodes
//! whose identity agrees with what it routes there ([`Identity::disagrees`]).

use wasmscore_engine::ScoreResponse;
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
/// Set by the router when the call can take a decoupled version's
/// responses before its last (a gRPC stream's message): the node answers
/// with outcome `stream`. Without it, a decoupled version's call is refused.
pub const RESPONSES: &str = "x-wasmscore-responses";
/// The largest frame of a streamed answer a router reads (a response is at
/// most a message's 100 MB).
pub const MAX_FRAME: usize = 128 << 20;
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
        self.busy.saturating_add(self.queued)
    }
}

/// What `x-wasmscore-outcome` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    Error,
    Draining,
    Stream,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Error => "error",
            Outcome::Draining => "draining",
            Outcome::Stream => "stream",
        }
    }
    pub fn parse(s: &str) -> Option<Outcome> {
        match s {
            "ok" => Some(Outcome::Ok),
            "error" => Some(Outcome::Error),
            "draining" => Some(Outcome::Draining),
            "stream" => Some(Outcome::Stream),
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

/// One frame of a streamed answer (outcome `stream`).
#[derive(Debug)]
pub enum Frame {
    /// A response the module sent before returning (`responses.send`).
    Sent(ScoreResponse),
    /// What the call ended with; nothing follows it.
    Last(Result<ScoreResponse, ScoreError>),
}

const SENT: u8 = b's';
const LAST_OK: u8 = b'o';
const LAST_ERROR: u8 = b'e';
/// A frame's kind, then the lengths (u32, big endian) of its content type,
/// tensor framing and body.
const FRAME_HEAD: usize = 13;

impl Frame {
    /// Its bytes: the head, the content type, the tensors' framing (as
    /// `x-wasmscore-tensors` says it; empty without tensors), the body (an
    /// error's as `encode_error` writes it). Err for a frame over
    /// [`MAX_FRAME`], which no router would take.
    pub fn encode(&self) -> Result<Vec<u8>, String> {
        let (kind, out) = match self {
            Frame::Sent(out) => (SENT, Ok(out)),
            Frame::Last(Ok(out)) => (LAST_OK, Ok(out)),
            Frame::Last(Err(e)) => (LAST_ERROR, Err(e)),
        };
        let (content_type, framing, body) = match out {
            Ok(out) if out.tensors.is_empty() => (out.content_type.as_str(), String::new(), out.body.clone()),
            Ok(out) => {
                let (buf, framing) = wasmscore_oip::pack(&out.body, &out.tensors);
                (out.content_type.as_str(), framing, buf)
            }
            Err(e) => ("application/json", String::new(), encode_error(e)),
        };
        let total = FRAME_HEAD + content_type.len() + framing.len() + body.len();
        if total > MAX_FRAME {
            return Err(format!(
                "a response of {total} bytes is more than a router takes ({MAX_FRAME} bytes)"
            ));
        }
        let mut buf = Vec::with_capacity(total);
        buf.push(kind);
        for n in [content_type.len(), framing.len(), body.len()] {
            buf.extend_from_slice(&(n as u32).to_be_bytes());
        }
        buf.extend_from_slice(content_type.as_bytes());
        buf.extend_from_slice(framing.as_bytes());
        buf.extend_from_slice(&body);
        Ok(buf)
    }

    /// Takes the first whole frame off `buf`; None while it has only part
    /// of one. Err for bytes that are not a frame (a frame over `limit`
    /// bytes included).
    pub fn decode(buf: &mut bytes::BytesMut, limit: usize) -> Result<Option<Frame>, String> {
        let Some(head) = buf.get(..FRAME_HEAD) else {
            return Ok(None);
        };
        let len = |i: usize| u32::from_be_bytes(head[1 + 4 * i..5 + 4 * i].try_into().expect("4 bytes")) as usize;
        let (ct_len, framing_len, body_len) = (len(0), len(1), len(2));
        let total = FRAME_HEAD
            .saturating_add(ct_len)
            .saturating_add(framing_len)
            .saturating_add(body_len);
        if total > limit {
            return Err(format!("a frame of {total} bytes (at most {limit})"));
        }
        let kind = head[0];
        if ![SENT, LAST_OK, LAST_ERROR].contains(&kind) {
            return Err(format!("a frame of unknown kind {kind:#04x}"));
        }
        if buf.len() < total {
            return Ok(None);
        }
        let frame = buf.split_to(total);
        let text = |b: &[u8]| {
            std::str::from_utf8(b)
                .map(str::to_string)
                .map_err(|_| "a frame's header is not UTF-8".to_string())
        };
        let content_type = text(&frame[FRAME_HEAD..FRAME_HEAD + ct_len])?;
        let framing = text(&frame[FRAME_HEAD + ct_len..FRAME_HEAD + ct_len + framing_len])?;
        let body = &frame[FRAME_HEAD + ct_len + framing_len..];
        if kind == LAST_ERROR {
            let e = decode_error(body).ok_or("a last frame's error could not be read")?;
            return Ok(Some(Frame::Last(Err(e))));
        }
        let (body, tensors) = if framing.is_empty() {
            (body.to_vec(), Vec::new())
        } else {
            wasmscore_oip::unpack(body, &framing).map_err(|e| format!("a frame's tensors could not be read: {e}"))?
        };
        let out = ScoreResponse {
            body,
            content_type,
            tensors,
        };
        Ok(Some(if kind == SENT { Frame::Sent(out) } else { Frame::Last(Ok(out)) }))
    }
}

/// For the fuzz target `node_answers` (fuzz/) and its corpus's replay.
pub mod fuzzing {
    use super::*;

    /// What a router reads from a node, from any bytes: a streamed
    /// answer's frames fed in pieces (byte 0 is the pieces' size), each
    /// frame it takes encoded again and read back the same; and the same
    /// bytes as a load header and as a ready answer's identity. Must never
    /// panic, and never hold more than the bytes given.
    pub fn node_answers(data: &[u8]) {
        let Some((&step, rest)) = data.split_first() else {
            return;
        };
        let mut buf = bytes::BytesMut::new();
        for piece in rest.chunks(usize::from(step).max(1)) {
            buf.extend_from_slice(piece);
            loop {
                match Frame::decode(&mut buf, MAX_FRAME) {
                    Ok(Some(frame)) => {
                        let again = frame.encode().expect("a frame read fits one");
                        let mut again = bytes::BytesMut::from(&again[..]);
                        let back = Frame::decode(&mut again, MAX_FRAME).expect("a frame encoded reads back");
                        assert_eq!(format!("{back:?}"), format!("Some({frame:?})"));
                        assert!(again.is_empty());
                    }
                    Ok(None) => break,
                    Err(_) => return,
                }
            }
        }
        if let Ok(text) = std::str::from_utf8(rest) {
            if let Some(load) = Load::parse(text) {
                assert_eq!(Load::parse(&load.encode()), Some(load));
            }
            if let Ok(identity) = serde_json::from_str::<Identity>(text) {
                let _ = identity.disagrees("e", "v", Some("sha256:0"));
            }
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
    fn frames_cross_in_pieces_and_garbage_is_refused() {
        let tensor = wasmscore_tensor::Tensor::new(vec![1], wasmscore_tensor::TensorData::Int64(vec![7])).unwrap();
        let frames = [
            Frame::Sent(ScoreResponse {
                body: b"{\"n\":0}".to_vec(),
                content_type: "application/json".into(),
                tensors: vec![],
            }),
            Frame::Sent(ScoreResponse {
                body: b"{}".to_vec(),
                content_type: "application/json".into(),
                tensors: vec![("INDEX".into(), tensor)],
            }),
            Frame::Last(Ok(ScoreResponse::default())),
            Frame::Last(Err(ScoreError::Call(CallError::Failed("no".into())))),
        ];
        let bytes: Vec<u8> = frames.iter().flat_map(|f| f.encode().unwrap()).collect();
        // Read as they come, a byte at a time.
        let (mut buf, mut read) = (bytes::BytesMut::new(), Vec::new());
        for b in bytes {
            buf.extend_from_slice(&[b]);
            while let Some(f) = Frame::decode(&mut buf, MAX_FRAME).unwrap() {
                read.push(f);
            }
        }
        assert!(buf.is_empty());
        assert_eq!(format!("{read:?}"), format!("{frames:?}"));
        let mut big = bytes::BytesMut::from(&Frame::Sent(ScoreResponse::default()).encode().unwrap()[..]);
        big[9..13].copy_from_slice(&(MAX_FRAME as u32).to_be_bytes());
        assert!(Frame::decode(&mut big, MAX_FRAME).unwrap_err().contains("at most"));
        let huge = Frame::Sent(ScoreResponse {
            body: vec![0; MAX_FRAME],
            ..ScoreResponse::default()
        });
        assert!(huge.encode().unwrap_err().contains("more than a router takes"));
        let mut unknown = bytes::BytesMut::from(&b"x\0\0\0\0\0\0\0\0\0\0\0\0"[..]);
        assert!(Frame::decode(&mut unknown, MAX_FRAME).unwrap_err().contains("unknown kind"));
        let mut bad_error = bytes::BytesMut::from(&Frame::Last(Err(ScoreError::Unavailable("x".into()))).encode().unwrap()[..]);
        let n = bad_error.len();
        bad_error[n - 1] = b'!';
        assert!(Frame::decode(&mut bad_error, MAX_FRAME).is_err());
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
