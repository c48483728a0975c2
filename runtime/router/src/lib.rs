//! Hop 2 of the request path: from an endpoint name to one of its versions.
//!
//! The control plane computes each endpoint's split (the versions that are
//! ready, each with its share of 100) and publishes it as an immutable
//! [`Endpoint`]; the table of endpoints is swapped whole (`ArcSwap`), so the
//! hot path reads a snapshot with no lock. A request goes to:
//! - the version it pins (`x-wasmscore-version`), if that version is ready;
//! - else, with a cohort key (`x-wasmscore-cohort`), the version whose range
//!   of the split the key's hash falls in, so the key keeps its version while
//!   the percentages hold;
//! - else the next slot of a smooth weighted round robin sequence of 100
//!   slots, walked by one atomic counter: the shares hold exactly over any
//!   100 consecutive requests, and no version gets a burst.
//!
//! A mirror version gets a copy of N of every 100 requests; the caller sends
//! it and discards the answer. This crate does not know why a version is not
//! ready; the control plane says so in [`Endpoint::not_ready`].

pub mod auth;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use wasmscore_engine::{ScoreRequest, ScoreResponse};
use wasmscore_remote::{Call, Nodes};
use wasmscore_replica::histogram::Histogram;
use wasmscore_replica::{Pool, ScoreError};

pub use auth::{AuthError, Policy};

/// A deployed, ready version: its name, where its replicas are, and what
/// its requests took.
pub struct Version {
    pub name: String,
    pub replicas: Replicas,
    /// Shared with the version's next table entries (the fleet rebuilds a
    /// Version when its nodes change): figures reset with the version only.
    pub stats: Arc<VersionStats>,
}

/// What a version's requests took and how they ended, as hop 2 saw them
/// (the replica's queue wait and call time are the pool's).
#[derive(Default)]
pub struct VersionStats {
    pub duration: Histogram,
    /// Answers by status class: 1xx (unused) to 5xx.
    pub responses: [AtomicU64; 5],
    /// Time taken by the answers of status 2xx, and by the others, summed
    /// (Triton's statistics: success and fail).
    pub ok_ns: AtomicU64,
    pub failed_ns: AtomicU64,
    /// When the last answer went out, in ms since the Unix epoch (0: none yet).
    pub last_ms: AtomicU64,
    /// Answers, of any status, to the requests the weighted split sent
    /// here (neither pinned to a version nor carrying a cohort key): what
    /// the verdict's split check holds against the configured shares.
    pub split: AtomicU64,
    /// Copies of requests not sent to this version as a mirror: the copies
    /// already in flight held the whole budget (`mirror_permit`).
    pub mirror_skipped: AtomicU64,
}

/// The request-path families for each version (LABELS: its endpoint,
/// version and role): the request duration histogram and answers by
/// status class.
pub fn render_version_stats(out: &mut String, versions: &[(String, &VersionStats)]) {
    use std::fmt::Write;
    if versions.is_empty() {
        return;
    }
    let durations: Vec<(String, &Histogram)> = versions.iter().map(|(l, s)| (l.clone(), &s.duration)).collect();
    wasmscore_replica::histogram::render(
        out,
        "wasmscore_request_duration_seconds",
        "Time from routing a request to a version to its answer (queue, run, and the node hop across the network).",
        &durations,
    );
    let _ = writeln!(
        out,
        "# HELP wasmscore_responses_total Answers of the version by HTTP status class.\n# TYPE wasmscore_responses_total counter"
    );
    for (labels, s) in versions {
        for (i, n) in s.responses.iter().enumerate().skip(1) {
            let _ = writeln!(
                out,
                "wasmscore_responses_total{{{labels},code=\"{}xx\"}} {}",
                i + 1,
                n.load(Ordering::Relaxed)
            );
        }
    }
    let _ = writeln!(
        out,
        "# HELP wasmscore_mirror_skipped_total Copies of requests not mirrored to the version: the copies in flight held their whole memory budget.\n# TYPE wasmscore_mirror_skipped_total counter"
    );
    for (labels, s) in versions {
        let _ = writeln!(
            out,
            "wasmscore_mirror_skipped_total{{{labels}}} {}",
            s.mirror_skipped.load(Ordering::Relaxed)
        );
    }
}

impl VersionStats {
    /// A new split (other shares): the split check counts from here, as
    /// the answers before were routed under the old shares.
    pub fn restart_split_check(&self) {
        self.split.store(0, Ordering::Relaxed);
    }

    fn record(&self, took: std::time::Duration, status: u16) {
        self.duration.observe(took);
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.responses[class].fetch_add(1, Ordering::Relaxed);
        let ns = took.as_nanos().min(u128::from(u64::MAX)) as u64;
        if class == 1 { &self.ok_ns } else { &self.failed_ns }.fetch_add(ns, Ordering::Relaxed);
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        self.last_ms.fetch_max(now, Ordering::Relaxed);
    }

    /// Answers of status 2xx, and the others.
    pub fn ok_and_failed(&self) -> (u64, u64) {
        let n = self.responses.each_ref().map(|c| c.load(Ordering::Relaxed));
        (n[1], n.iter().sum::<u64>() - n[1])
    }
}

/// How a request reaches a version's replicas: the one interface of hop 3,
/// with its two transports. Tests and modes pick the transport; the
/// request path is the same.
pub enum Replicas {
    /// In this process: `up`, and a node serving its version.
    Local(Arc<Pool>),
    /// On `wasmscore node` processes: the router across the network.
    Remote(Arc<Nodes>),
}

impl Version {
    pub fn local(name: &str, pool: Arc<Pool>) -> Version {
        Version {
            name: name.into(),
            replicas: Replicas::Local(pool),
            stats: Arc::default(),
        }
    }

    /// Whether its calls may send several responses (`decoupled: true`):
    /// it is called over gRPC streams only. A version on nodes is, once a
    /// node's ready answer said so.
    pub fn decoupled(&self) -> bool {
        match &self.replicas {
            Replicas::Local(pool) => pool.prepared().context().decoupled,
            Replicas::Remote(nodes) => nodes.decoupled(),
        }
    }

    /// Scores one request on one of the version's replicas. A decoupled
    /// version takes only requests that can take its responses, as Triton
    /// refuses a decoupled model's unary calls.
    pub async fn score(&self, req: ScoreRequest, call: &Call<'_>) -> Result<ScoreResponse, ScoreError> {
        let started = Instant::now();
        let result = match &self.replicas {
            _ if req.responses.is_none() && self.decoupled() => Err(ScoreError::unary_to_decoupled(&self.name, "")),
            Replicas::Local(pool) => pool.score(req).await,
            Replicas::Remote(nodes) => nodes.score(req, call).await,
        };
        let status = result.as_ref().map_or_else(|e| e.status().0, |_| 200);
        self.stats.record(started.elapsed(), status);
        result
    }
}

/// Slots in one turn of the split: shares are whole percentages.
const SLOTS: usize = 100;

/// One endpoint's routing table, immutable once published.
pub struct Endpoint {
    pub name: String,
    /// Ready versions, each with its share of the split (shares sum to 100,
    /// or to 0 when nothing but pinned traffic can be served).
    split: Vec<(Arc<Version>, u32)>,
    /// Ready versions outside the split, still reachable by pinning (a
    /// version at 0%, or the mirror).
    others: Vec<Arc<Version>>,
    /// Index into `split` for each slot of the round robin.
    sequence: Vec<u16>,
    mirror: Option<(Arc<Version>, u32)>,
    /// Versions that exist but cannot serve, with the reason (Transitioning,
    /// Failed: ...), so a pinned request gets 503 with the reason, not 404.
    not_ready: Vec<(String, String)>,
    counter: AtomicU64,
    /// Who may score it.
    auth: Policy,
}

/// Where one request goes.
pub struct Route {
    pub version: Arc<Version>,
    /// Also send a copy here and discard its answer.
    pub mirror: Option<Arc<Version>>,
    /// The weighted split chose the version (no pin, no cohort key).
    pub by_split: bool,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum RouteError {
    #[error("no service named {0:?}")]
    UnknownEndpoint(String),
    #[error("service {endpoint:?} has no version {version:?}")]
    UnknownVersion { endpoint: String, version: String },
    #[error("service {endpoint:?} cannot serve yet: {reason}")]
    NotReady { endpoint: String, reason: String },
    #[error("{0}")]
    Unauthorized(#[from] AuthError),
}

impl Endpoint {
    /// Builds an endpoint's table. `split` holds the ready versions with
    /// their effective shares (the control plane has already given the
    /// remainder to the default version); shares must sum to 100 or 0.
    pub fn new(
        name: &str,
        split: Vec<(Arc<Version>, u32)>,
        others: Vec<Arc<Version>>,
        mirror: Option<(Arc<Version>, u32)>,
        not_ready: Vec<(String, String)>,
    ) -> Endpoint {
        let split: Vec<_> = split.into_iter().filter(|(_, w)| *w > 0).collect();
        let total: u32 = split.iter().map(|(_, w)| w).sum();
        assert!(total == 0 || total as usize == SLOTS, "shares of {name} sum to {total}, not 100");
        let sequence = smooth_weighted_sequence(&split.iter().map(|(_, w)| *w).collect::<Vec<_>>());
        Endpoint {
            name: name.to_string(),
            split,
            others,
            sequence,
            mirror: mirror.filter(|(_, p)| *p > 0),
            not_ready,
            counter: AtomicU64::new(0),
            auth: Policy::Open,
        }
    }

    /// The same table with an auth policy (the default is open).
    pub fn with_auth(mut self, auth: Policy) -> Endpoint {
        self.auth = auth;
        self
    }

    /// Checks a request's `Authorization` header against the policy.
    fn check(&self, authorization: Option<&[u8]>) -> Result<(), RouteError> {
        // Only tokens need the time.
        let now = match self.auth {
            Policy::Tokens { .. } => SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
            _ => 0,
        };
        auth::check(&self.auth, authorization, now)?;
        Ok(())
    }

    pub fn auth(&self) -> &Policy {
        &self.auth
    }

    /// Every ready version (split, then others).
    pub fn versions(&self) -> impl Iterator<Item = &Arc<Version>> {
        self.split.iter().map(|(v, _)| v).chain(self.others.iter())
    }

    pub fn version(&self, name: &str) -> Option<&Arc<Version>> {
        self.versions().find(|v| v.name == name)
    }

    /// Whether calls to it may get several responses (Triton's decoupled
    /// transaction policy): the pinned version's, or, unpinned, whether any
    /// version the split sends to is decoupled.
    pub fn decoupled(&self, pin: Option<&str>) -> bool {
        match pin {
            Some(name) => self.version(name).is_some_and(|v| v.decoupled()),
            None => self.split.iter().any(|(v, share)| *share > 0 && v.decoupled()),
        }
    }

    /// The effective shares, as routed.
    pub fn shares(&self) -> Vec<(String, u32)> {
        self.split.iter().map(|(v, w)| (v.name.clone(), *w)).collect()
    }

    pub fn mirror(&self) -> Option<(&Arc<Version>, u32)> {
        self.mirror.as_ref().map(|(v, p)| (v, *p))
    }

    fn route(&self, pin: Option<&str>, cohort: Option<&str>) -> Result<Route, RouteError> {
        if let Some(want) = pin {
            if let Some(v) = self.version(want) {
                return Ok(Route {
                    version: v.clone(),
                    mirror: None,
                    by_split: false,
                });
            }
            if let Some((_, why)) = self.not_ready.iter().find(|(n, _)| n == want) {
                return Err(RouteError::NotReady {
                    endpoint: self.name.clone(),
                    reason: format!("version {want:?} is {why}"),
                });
            }
            return Err(RouteError::UnknownVersion {
                endpoint: self.name.clone(),
                version: want.into(),
            });
        }
        if self.split.is_empty() {
            let reason = if self.not_ready.is_empty() {
                "it has no version taking traffic".to_string()
            } else {
                self.not_ready
                    .iter()
                    .map(|(n, why)| format!("version {n:?} is {why}"))
                    .collect::<Vec<_>>()
                    .join("; ")
            };
            return Err(RouteError::NotReady {
                endpoint: self.name.clone(),
                reason,
            });
        }
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let index = match cohort {
            Some(key) => self.cohort_index(key),
            None => self.sequence[(n % SLOTS as u64) as usize] as usize,
        };
        let mirror = self.mirror.as_ref().and_then(|(m, pct)| {
            // Request n is mirrored when floor((n+1)·p/100) steps past floor(n·p/100):
            // exactly p of every 100, spread evenly.
            let k = n % SLOTS as u64;
            let p = *pct as u64;
            ((k + 1) * p / SLOTS as u64 > k * p / SLOTS as u64).then(|| m.clone())
        });
        Ok(Route {
            version: self.split[index].0.clone(),
            mirror,
            by_split: cohort.is_none(),
        })
    }

    /// The split laid out as ranges of 0..100; the key's hash picks a point.
    fn cohort_index(&self, key: &str) -> usize {
        let point = (fnv1a(key.as_bytes()) % SLOTS as u64) as u32;
        let mut upto = 0;
        for (i, (_, w)) in self.split.iter().enumerate() {
            upto += w;
            if point < upto {
                return i;
            }
        }
        self.split.len() - 1
    }
}

/// FNV-1a: stable across processes and releases, so a cohort keeps its
/// version over restarts (std's hasher is randomly seeded).
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// nginx's smooth weighted round robin, unrolled over one turn: each step
/// adds every weight to its running score, picks the highest and takes the
/// total from it. Over a turn each index appears exactly `weight` times, and
/// picks of one index are spread out rather than bunched.
fn smooth_weighted_sequence(weights: &[u32]) -> Vec<u16> {
    let total: i64 = weights.iter().map(|w| *w as i64).sum();
    if total == 0 {
        return Vec::new();
    }
    let mut current = vec![0i64; weights.len()];
    (0..total)
        .map(|_| {
            let mut best = 0;
            for (i, w) in weights.iter().enumerate() {
                current[i] += *w as i64;
                if current[i] > current[best] {
                    best = i;
                }
            }
            current[best] -= total;
            best as u16
        })
        .collect()
}

type Table = HashMap<String, Arc<Endpoint>>;

/// The routing table.
#[derive(Default)]
pub struct Router {
    table: ArcSwap<Table>,
}

impl Router {
    pub fn new() -> Self {
        Self::default()
    }

    /// Picks the version for one request, ignoring the endpoint's auth
    /// policy (for callers that checked it, and tests).
    pub fn route(&self, endpoint: &str, pin: Option<&str>, cohort: Option<&str>) -> Result<Route, RouteError> {
        let table = self.table.load();
        let ep = table
            .get(endpoint)
            .ok_or_else(|| RouteError::UnknownEndpoint(endpoint.to_string()))?;
        ep.route(pin, cohort)
    }

    /// Checks the request's `Authorization` header against the endpoint's
    /// policy, then picks its version.
    pub fn route_authorized(
        &self,
        endpoint: &str,
        authorization: Option<&[u8]>,
        pin: Option<&str>,
        cohort: Option<&str>,
    ) -> Result<Route, RouteError> {
        let table = self.table.load();
        let ep = table
            .get(endpoint)
            .ok_or_else(|| RouteError::UnknownEndpoint(endpoint.to_string()))?;
        ep.check(authorization)?;
        ep.route(pin, cohort)
    }

    /// The endpoint, once the request's `Authorization` header passed its
    /// policy (off the request path: its figures, say).
    pub fn authorize(&self, endpoint: &str, authorization: Option<&[u8]>) -> Result<Arc<Endpoint>, RouteError> {
        let ep = self
            .endpoint(endpoint)
            .ok_or_else(|| RouteError::UnknownEndpoint(endpoint.to_string()))?;
        ep.check(authorization)?;
        Ok(ep)
    }

    /// Whether the request's `Authorization` header passes some
    /// endpoint's policy (one with auth off passes any): a request whose
    /// endpoint is known only once its body is read is read only then.
    pub fn opens_any(&self, authorization: Option<&[u8]>) -> bool {
        self.table.load().values().any(|ep| ep.check(authorization).is_ok())
    }

    /// Every endpoint, by name.
    pub fn endpoints(&self) -> Vec<Arc<Endpoint>> {
        let mut all: Vec<Arc<Endpoint>> = self.table.load().values().cloned().collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    pub fn endpoint(&self, name: &str) -> Option<Arc<Endpoint>> {
        self.table.load().get(name).cloned()
    }

    /// Publishes an endpoint's new table. Requests that already hold a
    /// version finish on it; a version no longer referenced drains and stops
    /// when its last request is done.
    pub fn publish(&self, endpoint: Endpoint) {
        // The split served changed (a version came up or went down, or its
        // share changed): the split check counts from here, as the answers
        // before were routed under other shares.
        if let Some(old) = self.endpoint(&endpoint.name).filter(|old| old.shares() != endpoint.shares()) {
            for (v, _) in endpoint.split.iter().chain(&old.split) {
                v.stats.restart_split_check();
            }
        }
        let endpoint = Arc::new(endpoint);
        self.table.rcu(|old| {
            let mut t: Table = (**old).clone();
            t.insert(endpoint.name.clone(), endpoint.clone());
            t
        });
    }

    /// Removes an endpoint; true if it existed.
    pub fn remove(&self, endpoint: &str) -> bool {
        let mut existed = false;
        self.table.rcu(|old| {
            let mut t: Table = (**old).clone();
            existed = t.remove(endpoint).is_some();
            t
        });
        existed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sequence_holds_the_shares_and_spreads_them() {
        let seq = smooth_weighted_sequence(&[20, 80]);
        assert_eq!(seq.len(), 100);
        assert_eq!(seq.iter().filter(|i| **i == 0).count(), 20);
        // 20% is spread: never two picks of index 0 in a row.
        assert!(seq.windows(2).all(|w| !(w[0] == 0 && w[1] == 0)), "{seq:?}");
        let seq = smooth_weighted_sequence(&[90, 10]);
        assert_eq!(seq.iter().filter(|i| **i == 1).count(), 10);
        let seq = smooth_weighted_sequence(&[33, 33, 34]);
        assert_eq!(seq.iter().filter(|i| **i == 2).count(), 34);
    }

    #[test]
    fn any_window_of_100_slots_is_exact() {
        let seq = smooth_weighted_sequence(&[7, 50, 43]);
        // The sequence repeats, so any 100 consecutive slots are one full turn.
        for start in 0..100 {
            let count = (start..start + 100).filter(|k| seq[k % 100] == 0).count();
            assert_eq!(count, 7);
        }
    }

    #[test]
    fn mirror_takes_exactly_its_percentage() {
        for p in [1u64, 10, 33, 50] {
            let mirrored = (0..100u64).filter(|k| (k + 1) * p / 100 > k * p / 100).count();
            assert_eq!(mirrored as u64, p);
        }
    }

    fn on_nodes(name: &str) -> Arc<Version> {
        use wasmscore_remote::nodes::http_client;
        use wasmscore_remote::{NodeHttp, NodesConfig};
        let nodes = Nodes::new(
            ("e", name),
            &["127.0.0.1:9".to_string()],
            NodeHttp::H2,
            http_client(NodeHttp::H2),
            NodesConfig::default(),
        )
        .unwrap();
        Arc::new(Version {
            name: name.into(),
            replicas: Replicas::Remote(Arc::new(nodes)),
            stats: Arc::default(),
        })
    }

    /// The verdict's split check counts answers under one served split: a
    /// version coming up (or going down) starts it again; a table published
    /// again with the same shares does not.
    #[test]
    fn the_split_check_restarts_when_the_served_shares_change() {
        let (a, b) = (on_nodes("a"), on_nodes("b"));
        let router = Router::new();
        let counted = |n: u64| {
            a.stats.split.store(n, Ordering::Relaxed);
            b.stats.split.store(n, Ordering::Relaxed);
        };
        let splits = || (a.stats.split.load(Ordering::Relaxed), b.stats.split.load(Ordering::Relaxed));
        // b is still building: a serves all of it.
        router.publish(Endpoint::new("e", vec![(a.clone(), 100)], vec![b.clone()], None, vec![]));
        counted(40);
        router.publish(Endpoint::new("e", vec![(a.clone(), 100)], vec![b.clone()], None, vec![]));
        assert_eq!(splits(), (40, 40), "the same shares: the counts go on");
        // b is up: 50/50 from now on.
        router.publish(Endpoint::new("e", vec![(a.clone(), 50), (b.clone(), 50)], vec![], None, vec![]));
        assert_eq!(splits(), (0, 0), "a version came up: the check starts again");
        counted(7);
        // b goes down: a serves all again.
        router.publish(Endpoint::new("e", vec![(a.clone(), 100)], vec![b.clone()], None, vec![]));
        assert_eq!(splits(), (0, 0), "a version went down: both start again");
    }

    #[test]
    fn cohort_hash_is_stable() {
        // Fixed values: a cohort must keep its bucket across releases.
        assert_eq!(fnv1a(b""), 0xcbf29ce484222325);
        assert_eq!(fnv1a(b"a"), 0xaf63dc4c8601ec8c);
    }
}
