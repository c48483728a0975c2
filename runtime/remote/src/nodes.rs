//! The router's side: a version served by remote nodes.
//!
//! - Balancing: the power of two choices on outstanding requests (two
//!   available nodes at random, the one with fewer requests in flight from
//!   this router), as linkerd2-proxy and Finagle balance: a slow node keeps
//!   its requests longer, so it is picked less.
//! - Connections: one HTTP/2 connection per node and shard
//!   ([`crate::shards`]: a router's threads), multiplexed, shared by every
//!   request of the shard's connections to the version; or, by choice,
//!   pooled HTTP/1.1 keep-alive connections, a pool per shard.
//! - Outlier ejection: a connect error, a reset, garbage or no answer in time
//!   ejects the node for a backoff (1 s doubling to 30 s while it keeps
//!   failing); it is re-admitted when the backoff is over and its
//!   `/v2/health/ready` answers 200. A module's error is the client's
//!   answer, not a node failure.
//! - Retries: only requests that provably never reached a module: the
//!   connection was refused, or the node said it is draining. Nothing a
//!   module may have seen is sent twice.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rand::Rng;
use wasmscore_engine::{ScoreRequest, ScoreResponse};
use wasmscore_replica::ScoreError;

use crate::wire::{self, Load, Outcome};

/// The client every version's nodes share, for health checks and
/// `--node-http1`'s requests: a pool per shard (crate::shards), so a
/// connection's task runs on the thread of the requests it carries.
#[derive(Clone)]
pub struct HttpClient(Arc<[Client<HttpConnector, Full<Bytes>>]>);

impl HttpClient {
    /// This thread's pool.
    fn here(&self) -> &Client<HttpConnector, Full<Bytes>> {
        &self.0[crate::shards::slot().min(self.0.len() - 1)]
    }
}

/// How the router talks to nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeHttp {
    /// HTTP/2 with prior knowledge: one multiplexed connection per node.
    H2,
    /// HTTP/1.1 keep-alive: a pool of connections per node, one request on
    /// each at a time (measured faster on loopback: BENCHMARKS.md).
    H1,
}

/// A client for the internal protocol.
pub fn http_client(http: NodeHttp) -> HttpClient {
    HttpClient((0..crate::shards::slots()).map(|_| pool(http)).collect())
}

fn pool(http: NodeHttp) -> Client<HttpConnector, Full<Bytes>> {
    let mut c = HttpConnector::new();
    c.set_nodelay(true);
    // A node that does not accept within this is as good as down here.
    c.set_connect_timeout(Some(Duration::from_secs(1)));
    Client::builder(TokioExecutor::new())
        .http2_only(http == NodeHttp::H2)
        // A connection that died silently (no FIN, no RST) is found by a
        // ping, not by a request waiting for its deadline.
        .http2_keep_alive_interval(Some(Duration::from_secs(5)))
        .http2_keep_alive_timeout(Duration::from_secs(2))
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .build(c)
}

/// A version's settings across its nodes.
#[derive(Debug, Clone, PartialEq)]
pub struct NodesConfig {
    /// The scoring deadline for one request, node included: the longest a
    /// node may take to answer itself (its queue wait, the scoring timeout
    /// and the grace for a call blocked in the host) plus a margin.
    pub timeout: Duration,
    /// First ejection; doubled per failure in a row, up to `eject_max`.
    pub eject_base: Duration,
    pub eject_max: Duration,
    /// How long a health check may take.
    pub check_timeout: Duration,
    /// How often an HTTP/2 connection to a node is PINGed, and how long the
    /// answer may take before the connection is closed.
    pub keepalive: Duration,
    /// The artifact (a digest) its nodes must serve, if one is named.
    pub artifact: Option<String>,
    /// Its deployment config says `decoupled: true` (its nodes' ready
    /// answers may say so too).
    pub decoupled: bool,
}

impl Default for NodesConfig {
    fn default() -> Self {
        NodesConfig {
            timeout: Duration::from_millis(61_000),
            eject_base: Duration::from_secs(1),
            eject_max: Duration::from_secs(30),
            check_timeout: Duration::from_secs(1),
            keepalive: Duration::from_secs(10),
            artifact: None,
            decoupled: false,
        }
    }
}

/// What one request carries besides its body.
#[derive(Debug, Clone, Copy, Default)]
pub struct Call<'a> {
    pub endpoint: &'a str,
    pub version: &'a str,
    pub traceparent: Option<&'a str>,
    pub tracestate: Option<&'a str>,
}

/// One node as this router sees it.
struct Node {
    addr: String,
    score_uri: Uri,
    ready_uri: Uri,
    /// Requests sent and not answered yet.
    outstanding: AtomicUsize,
    /// Its last health check passed and it is not ejected or draining.
    ready: AtomicBool,
    ejected_until_ms: AtomicU64,
    failures_in_a_row: AtomicU32,
    /// The load it last reported, and when (ms since `Nodes::epoch`).
    busy: AtomicU32,
    queued: AtomicU32,
    replicas: AtomicU32,
    max_concurrent: AtomicU32,
    load_at_ms: AtomicU64,
    served: AtomicU64,
    failed: AtomicU64,
    ejections: AtomicU64,
    /// Its HTTP/2 connections, when the router speaks HTTP/2 to nodes: one
    /// per shard, so a request and its connection's task share a thread
    /// (crate::shards), and one for tasks on no shard.
    h2: Option<Box<[H2Conn]>>,
    /// Why it is not ready (a rare write: checks and failures).
    why: std::sync::RwLock<String>,
}

impl Node {
    fn new(addr: &str, http: NodeHttp, keepalive: Duration) -> Result<Node, String> {
        let uri = |path: &str| {
            format!("http://{addr}{path}")
                .parse::<Uri>()
                .map_err(|e| format!("node address {addr:?}: {e}"))
        };
        Ok(Node {
            addr: addr.to_string(),
            score_uri: uri(wire::SCORE_PATH)?,
            ready_uri: uri(wire::READY_PATH)?,
            outstanding: AtomicUsize::new(0),
            ready: AtomicBool::new(false),
            ejected_until_ms: AtomicU64::new(0),
            failures_in_a_row: AtomicU32::new(0),
            busy: AtomicU32::new(0),
            queued: AtomicU32::new(0),
            replicas: AtomicU32::new(0),
            max_concurrent: AtomicU32::new(0),
            load_at_ms: AtomicU64::new(0),
            served: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            ejections: AtomicU64::new(0),
            h2: (http == NodeHttp::H2).then(|| (0..crate::shards::slots()).map(|_| H2Conn::new(keepalive)).collect()),
            why: std::sync::RwLock::new("not checked yet".into()),
        })
    }

    fn set_why(&self, why: String) {
        *self.why.write().unwrap_or_else(|p| p.into_inner()) = why;
    }

    fn why(&self) -> String {
        self.why.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn record_load(&self, headers: &hyper::HeaderMap, now_ms: u64) {
        if let Some(l) = headers.get(wire::LOAD).and_then(|v| v.to_str().ok()).and_then(Load::parse) {
            self.busy.store(l.busy, Ordering::Relaxed);
            self.queued.store(l.queued, Ordering::Relaxed);
            self.replicas.store(l.replicas, Ordering::Relaxed);
            self.max_concurrent.store(l.max_concurrent, Ordering::Relaxed);
            self.load_at_ms.store(now_ms.max(1), Ordering::Relaxed);
        }
    }

    fn load(&self) -> Load {
        Load {
            busy: self.busy.load(Ordering::Relaxed),
            queued: self.queued.load(Ordering::Relaxed),
            replicas: self.replicas.load(Ordering::Relaxed),
            max_concurrent: self.max_concurrent.load(Ordering::Relaxed),
        }
    }
}

/// Takes a request off a node's outstanding count however it ends.
struct Outstanding<'a>(&'a AtomicUsize);

impl Drop for Outstanding<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A node as `show` and the status route print it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct NodeView {
    pub addr: String,
    pub ready: bool,
    /// Why it is not ready ("" when it is).
    pub reason: String,
    pub outstanding: usize,
    /// The load it last reported, if it reported any.
    pub load: Option<Load>,
    pub served: u64,
    pub failed: u64,
    pub ejections: u64,
}

/// A version served by remote nodes.
pub struct Nodes {
    /// The endpoint and version it serves: a node that says it serves
    /// another is not ready here.
    pub endpoint: String,
    pub version: String,
    nodes: Vec<Node>,
    client: HttpClient,
    cfg: NodesConfig,
    epoch: Instant,
    /// Requests sent again to another node (refused connections, drains).
    pub retried: AtomicU64,
    /// For a version scaled to zero: what asks for a node, and how long a
    /// request waits for one (see [`Nodes::wakes_with`]).
    wake: Option<(Box<dyn Fn() + Send + Sync>, Duration)>,
    /// The node set that replaced this one (the next spec's), which a
    /// request waiting for a node follows.
    next: std::sync::OnceLock<Arc<Nodes>>,
    /// The model's inputs and outputs, as the last ready node reported
    /// them (`{"inputs": [...], "outputs": [...]}`), for OIP metadata. A
    /// Mutex: written by health checks, read by metadata requests, both
    /// rare and off the scoring path.
    signature: std::sync::Mutex<Option<serde_json::Value>>,
    /// Its calls may send several responses, as the last ready node said
    /// (`"decoupled": true` in its ready answer).
    decoupled: AtomicBool,
    /// A round of health checks is under way.
    checking: AtomicBool,
}

impl Nodes {
    pub fn new(
        (endpoint, version): (&str, &str),
        addrs: &[String],
        http: NodeHttp,
        client: HttpClient,
        cfg: NodesConfig,
    ) -> Result<Nodes, String> {
        Ok(Nodes {
            endpoint: endpoint.to_string(),
            version: version.to_string(),
            nodes: addrs.iter().map(|a| Node::new(a, http, cfg.keepalive)).collect::<Result<_, _>>()?,
            client,
            cfg,
            epoch: Instant::now(),
            retried: AtomicU64::new(0),
            wake: None,
            next: std::sync::OnceLock::new(),
            signature: std::sync::Mutex::new(None),
            decoupled: AtomicBool::new(false),
            checking: AtomicBool::new(false),
        })
    }

    /// Whether its calls may send several responses (a decoupled version):
    /// its config says so, or its nodes' ready answers did.
    pub fn decoupled(&self) -> bool {
        self.cfg.decoupled || self.decoupled.load(Ordering::Relaxed)
    }

    /// The model's inputs and outputs, once a node reported them ready.
    pub fn signature(&self) -> Option<serde_json::Value> {
        self.signature.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// A version scaled to zero on purpose: a request that finds no node
    /// calls `wake` (which asks for one) and waits up to `wait` for a ready
    /// node in a node set that replaces this one, then is sent there.
    pub fn wakes_with(mut self, wake: impl Fn() + Send + Sync + 'static, wait: Duration) -> Nodes {
        self.wake = Some((Box::new(wake), wait));
        self
    }

    /// Whether a request that finds no ready node wakes it (min 0).
    pub fn wakes(&self) -> bool {
        self.wake.is_some()
    }

    /// Whether it lists no node at all.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Says which node set replaced this one (a spec with other nodes).
    pub fn replaced_by(&self, next: &Arc<Nodes>) {
        let _ = self.next.set(next.clone());
    }

    /// The newest node set along the chain of replacements.
    fn latest(self: &Arc<Self>) -> Arc<Nodes> {
        let mut cur = self.clone();
        while let Some(n) = cur.next.get() {
            cur = n.clone();
        }
        cur
    }

    pub fn config(&self) -> &NodesConfig {
        &self.cfg
    }

    pub fn addrs(&self) -> impl Iterator<Item = &str> {
        self.nodes.iter().map(|n| n.addr.as_str())
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Nodes that take requests now.
    pub fn ready_count(&self) -> usize {
        self.nodes.iter().filter(|n| n.ready.load(Ordering::Acquire)).count()
    }

    /// Why no node takes requests ("a: connection refused; b: draining").
    pub fn why_unavailable(&self) -> String {
        if self.nodes.is_empty() {
            return "it has no nodes".into();
        }
        let parts: Vec<String> = self.nodes.iter().map(|n| format!("{}: {}", n.addr, n.why())).collect();
        format!("no ready node ({})", parts.join("; "))
    }

    /// The demand the version's nodes carry: per node, what it last
    /// reported (busy + queued: every router's requests) or, when that is
    /// older than a second or smaller, this router's requests in flight on it.
    pub fn demand(&self) -> usize {
        let now = self.now_ms();
        self.nodes
            .iter()
            .map(|n| {
                let mine = n.outstanding.load(Ordering::Relaxed);
                let at = n.load_at_ms.load(Ordering::Relaxed);
                let reported = if at > 0 && now.saturating_sub(at) < 1000 {
                    n.load().demand() as usize
                } else {
                    0
                };
                mine.max(reported)
            })
            .sum()
    }

    /// Instances per replica, as the nodes report it (1 until one does).
    pub fn max_concurrent(&self) -> usize {
        self.nodes
            .iter()
            .map(|n| n.max_concurrent.load(Ordering::Relaxed) as usize)
            .max()
            .unwrap_or(0)
            .max(1)
    }

    pub fn views(&self) -> Vec<NodeView> {
        self.nodes
            .iter()
            .map(|n| {
                let ready = n.ready.load(Ordering::Acquire);
                let l = n.load();
                NodeView {
                    addr: n.addr.clone(),
                    ready,
                    reason: if ready { String::new() } else { n.why() },
                    outstanding: n.outstanding.load(Ordering::Relaxed),
                    load: (n.load_at_ms.load(Ordering::Relaxed) > 0).then_some(l),
                    served: n.served.load(Ordering::Relaxed),
                    failed: n.failed.load(Ordering::Relaxed),
                    ejections: n.ejections.load(Ordering::Relaxed),
                }
            })
            .collect()
    }

    /// Carries the health of nodes with the same address over from the
    /// version's previous node set (a re-read config keeps what it knew);
    /// not their readiness if the artifact they must serve changed.
    pub fn inherit(&self, old: &Nodes) {
        for n in &self.nodes {
            if let Some(o) = old.nodes.iter().find(|o| o.addr == n.addr) {
                if old.cfg.artifact == self.cfg.artifact {
                    n.ready.store(o.ready.load(Ordering::Acquire), Ordering::Release);
                    n.set_why(o.why());
                    self.decoupled.store(old.decoupled.load(Ordering::Relaxed), Ordering::Relaxed);
                }
                let shift = self.now_ms() as i64 - old.now_ms() as i64;
                let until = o.ejected_until_ms.load(Ordering::Relaxed) as i64 + shift;
                n.ejected_until_ms.store(until.max(0) as u64, Ordering::Relaxed);
                n.failures_in_a_row
                    .store(o.failures_in_a_row.load(Ordering::Relaxed), Ordering::Relaxed);
                // Counters in /metrics never go down while the node stays.
                // (Calls still in flight on the old set count there.)
                for (mine, theirs) in [(&n.served, &o.served), (&n.failed, &o.failed), (&n.ejections, &o.ejections)] {
                    mine.store(theirs.load(Ordering::Relaxed), Ordering::Relaxed);
                }
            }
        }
        self.retried.store(old.retried.load(Ordering::Relaxed), Ordering::Relaxed);
    }

    /// Two ready nodes at random, not tried yet; the one with fewer
    /// requests in flight.
    fn pick(&self, tried: u64) -> Option<usize> {
        let mut avail = [0usize; 64];
        let mut n = 0;
        for (i, node) in self.nodes.iter().enumerate().take(64) {
            if tried & (1 << i) == 0 && node.ready.load(Ordering::Acquire) {
                avail[n] = i;
                n += 1;
            }
        }
        match n {
            0 => None,
            1 => Some(avail[0]),
            _ => {
                let mut rng = rand::rng();
                let a = rng.random_range(0..n);
                let mut b = rng.random_range(0..n - 1);
                if b >= a {
                    b += 1;
                }
                let (a, b) = (avail[a], avail[b]);
                let load = |i: usize| self.nodes[i].outstanding.load(Ordering::Relaxed);
                Some(if load(b) < load(a) { b } else { a })
            }
        }
    }

    /// Takes a node out for a backoff. Requests that fail together (all
    /// those in flight when it crashed) are one incident: only the one that
    /// takes it out counts towards the next, longer backoff.
    fn eject(&self, node: &Node, why: String) {
        node.failed.fetch_add(1, Ordering::Relaxed);
        let now = self.now_ms();
        if node.ejected_until_ms.load(Ordering::Acquire) > now {
            return;
        }
        let k = node.failures_in_a_row.fetch_add(1, Ordering::Relaxed).min(16);
        let backoff = self.cfg.eject_base.saturating_mul(1 << k).min(self.cfg.eject_max);
        node.ejected_until_ms.store(now + backoff.as_millis() as u64, Ordering::Release);
        node.ejections.fetch_add(1, Ordering::Relaxed);
        node.ready.store(false, Ordering::Release);
        tracing::warn!(version = %self.version, node = %node.addr, backoff_ms = backoff.as_millis() as u64, reason = %why, "node ejected");
        node.set_why(format!("ejected for {} ms: {why}", backoff.as_millis()));
    }

    /// Scores one request on one of the version's nodes; at zero, wakes the
    /// version and waits (bounded) for its first node.
    pub async fn score(self: &Arc<Self>, req: ScoreRequest, call: &Call<'_>) -> Result<ScoreResponse, ScoreError> {
        let started = Instant::now();
        let Some((wake, wait)) = self.wake.as_ref().filter(|_| self.ready_count() == 0) else {
            return self.score_on_ready(req, call, started).await;
        };
        wake();
        loop {
            let latest = self.latest();
            if latest.ready_count() > 0 {
                return latest.score_on_ready(req, call, started).await;
            }
            if started.elapsed() >= *wait {
                return Err(ScoreError::Unavailable(format!(
                    "version {:?} is scaled to zero and no node became ready within {} s of this request waking it",
                    self.version,
                    wait.as_secs()
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn score_on_ready(&self, req: ScoreRequest, call: &Call<'_>, started: Instant) -> Result<ScoreResponse, ScoreError> {
        // Tensors the edge decoded travel after the body, framed as the
        // binary tensor extension frames them.
        let (body, tensors) = if req.tensors.is_empty() {
            (Bytes::from(req.body), None)
        } else {
            let (buf, framing) = wasmscore_oip::pack(&req.body, &req.tensors);
            (Bytes::from(buf), Some(framing))
        };
        let mut tried = 0u64;
        loop {
            let Some(i) = self.pick(tried) else {
                return Err(ScoreError::Unavailable(format!(
                    "version {:?} has {}",
                    self.version,
                    self.why_unavailable()
                )));
            };
            tried |= 1 << i;
            let node = &self.nodes[i];
            let remaining = self.cfg.timeout.saturating_sub(started.elapsed());
            if remaining.is_zero() {
                // Spent on nodes that refused: no time left to send it.
                return Err(ScoreError::NodeTimeout {
                    node: node.addr.clone(),
                    waited_ms: started.elapsed().as_millis() as u64,
                });
            }
            let mut r = Request::builder()
                .method(Method::POST)
                .uri(node.score_uri.clone())
                .header(wire::ENDPOINT, call.endpoint)
                .header(wire::VERSION, call.version)
                .header(wire::DEADLINE_MS, remaining.as_millis().to_string());
            if let Ok(ct) = HeaderValue::from_str(&req.content_type) {
                r = r.header(CONTENT_TYPE, ct);
            }
            if let Some(f) = &tensors {
                r = r.header(wire::TENSORS, f.as_str());
            }
            if req.responses.is_some() {
                r = r.header(wire::RESPONSES, "1");
            }
            for (name, value) in [("traceparent", call.traceparent), ("tracestate", call.tracestate)] {
                if let Some(v) = value.and_then(|v| HeaderValue::from_str(v).ok()) {
                    r = r.header(name, v);
                }
            }
            node.outstanding.fetch_add(1, Ordering::Relaxed);
            let _out = Outstanding(&node.outstanding);
            let exchange = async {
                let (parts, body) = match &node.h2 {
                    Some(conns) => {
                        let h2 = &conns[crate::shards::slot().min(conns.len() - 1)];
                        let request = r.body(()).expect("a valid request");
                        let (parts, recv) = h2.send(&node.addr, request, body.clone()).await?;
                        (parts, Reply::H2(recv, h2))
                    }
                    None => {
                        let request = r.body(Full::new(body.clone())).expect("a valid request");
                        let resp = self.client.here().request(request).await.map_err(|e| {
                            if e.is_connect() {
                                Sent::NotSent(format!("cannot connect: {}", cause(&e)))
                            } else {
                                Sent::Failed(cause(&e))
                            }
                        })?;
                        let (parts, body) = resp.into_parts();
                        (parts, Reply::H1(body))
                    }
                };
                let streams = parts.headers.get(wire::OUTCOME).is_some_and(|o| o == Outcome::Stream.as_str());
                match &req.responses {
                    Some(responses) if streams => {
                        let last = body.pass_on(responses).await.map_err(Sent::Failed)?;
                        Ok(Exchanged::Streamed(parts, last))
                    }
                    _ => Ok(Exchanged::Whole(parts, body.collect().await?)),
                }
            };
            let (parts, bytes) = match tokio::time::timeout(remaining, exchange).await {
                Err(_) => {
                    let waited_ms = started.elapsed().as_millis() as u64;
                    // Its connections may be dead with no error to show (a
                    // peer gone without a reset): the next call makes new
                    // ones. Streams in flight on them go on.
                    for conn in node.h2.iter().flatten() {
                        conn.send.store(None);
                    }
                    // A node that had (about) the whole budget, which holds
                    // its own deadline and more, and did not answer is
                    // broken. One that had what was left after a wake or a
                    // retry is not shown to be.
                    if remaining.as_secs_f64() >= 0.9 * self.cfg.timeout.as_secs_f64() {
                        self.eject(node, format!("no answer within {waited_ms} ms"));
                    } else {
                        tracing::info!(version = %self.version, node = %node.addr, remaining_ms = remaining.as_millis() as u64,
                            "no answer within what was left of the request's deadline (spent before it was sent); the node stays in");
                    }
                    return Err(ScoreError::NodeTimeout {
                        node: node.addr.clone(),
                        waited_ms,
                    });
                }
                Ok(Err(Sent::NotSent(why))) => {
                    // Never reached the node: another one may take it.
                    self.eject(node, why);
                    self.retried.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                Ok(Err(Sent::Failed(message))) => {
                    self.eject(node, message.clone());
                    return Err(ScoreError::Node {
                        node: node.addr.clone(),
                        message,
                    });
                }
                Ok(Err(Sent::TooLarge(message))) => {
                    // The node did its work; the answer is the call's, not
                    // a sign of a broken node: it stays in.
                    return Err(ScoreError::Node {
                        node: node.addr.clone(),
                        message,
                    });
                }
                Ok(Ok(Exchanged::Streamed(parts, last))) => {
                    // A decoupled call: its responses went out as they came;
                    // this is its last.
                    node.record_load(&parts.headers, self.now_ms());
                    node.served.fetch_add(1, Ordering::Relaxed);
                    node.failures_in_a_row.store(0, Ordering::Relaxed);
                    return last;
                }
                Ok(Ok(Exchanged::Whole(parts, bytes))) => (parts, bytes),
            };
            node.record_load(&parts.headers, self.now_ms());
            let outcome = parts
                .headers
                .get(wire::OUTCOME)
                .and_then(|v| v.to_str().ok())
                .and_then(Outcome::parse);
            match outcome {
                Some(Outcome::Ok) => {
                    node.served.fetch_add(1, Ordering::Relaxed);
                    node.failures_in_a_row.store(0, Ordering::Relaxed);
                    let content_type = parts
                        .headers
                        .get(CONTENT_TYPE)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("application/json")
                        .to_string();
                    let (body, tensors) = match parts.headers.get(wire::TENSORS).and_then(|v| v.to_str().ok()) {
                        None => (bytes.to_vec(), Vec::new()),
                        Some(framing) => wasmscore_oip::unpack(&bytes, framing).map_err(|e| ScoreError::Node {
                            node: node.addr.clone(),
                            message: format!("its tensors could not be read: {e}"),
                        })?,
                    };
                    return Ok(ScoreResponse {
                        body,
                        content_type,
                        tensors,
                    });
                }
                Some(Outcome::Error) => {
                    node.served.fetch_add(1, Ordering::Relaxed);
                    node.failures_in_a_row.store(0, Ordering::Relaxed);
                    return Err(wire::decode_error(&bytes).unwrap_or_else(|| ScoreError::Node {
                        node: node.addr.clone(),
                        message: "its error could not be read".into(),
                    }));
                }
                Some(Outcome::Draining) => {
                    // It did not start the request: send it elsewhere, and
                    // no more until it is ready again (it will not be).
                    if node.ready.swap(false, Ordering::AcqRel) {
                        tracing::info!(version = %self.version, node = %node.addr, "node is draining");
                    }
                    node.set_why("draining".into());
                    self.retried.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                Some(Outcome::Stream) | None => {
                    let message = if outcome.is_some() {
                        "answered with a stream of responses a call that takes one".to_string()
                    } else {
                        format!(
                            "answered {} without the internal protocol's outcome header (not a wasmscore node?)",
                            parts.status
                        )
                    };
                    self.eject(node, message.clone());
                    return Err(ScoreError::Node {
                        node: node.addr.clone(),
                        message,
                    });
                }
            }
        }
    }

    /// Asks every node whether it is ready; a node that is ejected stays
    /// out until its backoff is over, then comes back on a passed check.
    /// A round of [`check`](Self::check), unless one is still under way
    /// (a node that takes its whole check timeout): rounds of one version
    /// never pile up, and a caller that starts them on a timer without
    /// waiting is never held by one.
    pub async fn check_unless_checking(&self) {
        struct Done<'a>(&'a AtomicBool);
        impl Drop for Done<'_> {
            fn drop(&mut self) {
                self.0.store(false, Ordering::Release);
            }
        }
        if self.checking.swap(true, Ordering::AcqRel) {
            return;
        }
        let _done = Done(&self.checking);
        self.check().await;
    }

    pub async fn check(&self) {
        let checks = self.nodes.iter().map(|node| async move {
            let req = Request::builder()
                .method(Method::GET)
                .uri(node.ready_uri.clone())
                .body(Full::new(Bytes::new()))
                .expect("a valid request");
            let answer = tokio::time::timeout(self.cfg.check_timeout, async {
                let resp = self.client.here().request(req).await.map_err(|e| cause(&e))?;
                let (parts, body) = resp.into_parts();
                // A ready answer is a small JSON object; something else on
                // the address (a reused pod IP) may send any amount.
                let bytes = http_body_util::Limited::new(body, 64 << 10)
                    .collect()
                    .await
                    .map_err(|e| format!("its ready answer: {e}"))?
                    .to_bytes();
                Ok::<_, String>((parts, bytes))
            })
            .await;
            let verdict = match answer {
                Err(_) => Err(format!("health check took over {} ms", self.cfg.check_timeout.as_millis())),
                Ok(Err(e)) => Err(format!("health check: {e}")),
                Ok(Ok((parts, bytes))) => {
                    if parts.status == 200 {
                        let body = serde_json::from_slice::<serde_json::Value>(&bytes).unwrap_or_default();
                        // A ready answer whose identity cannot be read is not taken
                        // for one that names nothing.
                        let disagrees = match serde_json::from_value::<wire::Identity>(body.clone()) {
                            Ok(identity) => identity.disagrees(&self.endpoint, &self.version, self.cfg.artifact.as_deref()),
                            Err(e) => Some(format!(
                                "its ready answer does not say what it serves in a form this router reads: {e}"
                            )),
                        };
                        match disagrees {
                            // Its load is another version's.
                            Some(why) => Err(why),
                            None => {
                                node.record_load(&parts.headers, self.now_ms());
                                self.decoupled.store(body["decoupled"] == true, Ordering::Relaxed);
                                if body["inputs"].is_array() {
                                    let sig = serde_json::json!({"inputs": body["inputs"], "outputs": body["outputs"]});
                                    *self.signature.lock().unwrap_or_else(|p| p.into_inner()) = Some(sig);
                                }
                                Ok(())
                            }
                        }
                    } else {
                        node.record_load(&parts.headers, self.now_ms());
                        let why = serde_json::from_slice::<serde_json::Value>(&bytes)
                            .ok()
                            .and_then(|v| v["error"].as_str().map(str::to_string))
                            .unwrap_or_else(|| format!("answered {}", parts.status));
                        Err(format!("not ready: {why}"))
                    }
                }
            };
            let ejected = node.ejected_until_ms.load(Ordering::Relaxed) > self.now_ms();
            match verdict {
                Ok(()) if !ejected => {
                    if !node.ready.swap(true, Ordering::AcqRel) {
                        // An ejection that landed since the check began wins.
                        if node.ejected_until_ms.load(Ordering::Acquire) > self.now_ms() {
                            node.ready.store(false, Ordering::Release);
                            return;
                        }
                        tracing::info!(version = %self.version, node = %node.addr, "node ready");
                    }
                    node.set_why(String::new());
                }
                Ok(()) => {}
                Err(why) => {
                    if node.ready.swap(false, Ordering::AcqRel) {
                        tracing::warn!(version = %self.version, node = %node.addr, reason = %why, "node not ready");
                    }
                    if !ejected {
                        node.set_why(why);
                    }
                }
            }
        });
        futures_join_all(checks).await;
    }
}

/// How a request to a node went wrong.
#[allow(clippy::enum_variant_names)] // "not sent" is what it says
enum Sent {
    /// Provably not processed: the connection was refused, or the stream
    /// was refused before the node read it. Safe to send elsewhere.
    NotSent(String),
    /// It may have reached a module: not retried.
    Failed(String),
    /// Answered, but over the size an answer may have (the call's, not the
    /// node's fault).
    TooLarge(String),
}

/// What a node's answer to a call came to.
enum Exchanged {
    /// Its whole body, as it sent it.
    Whole(http::response::Parts, Bytes),
    /// A decoupled call (outcome `stream`): its responses were passed on;
    /// this is its last.
    Streamed(http::response::Parts, Result<ScoreResponse, ScoreError>),
}

/// A node's answer's body, read as it comes. Once its head came the node
/// took the request, so a failure here is the node's ([`Sent::Failed`]).
enum Reply<'a> {
    /// With the connection it came on, forgotten if it broke.
    H2(h2::RecvStream, &'a H2Conn),
    H1(hyper::body::Incoming),
}

impl Reply<'_> {
    async fn chunk(&mut self) -> Option<Result<Bytes, String>> {
        match self {
            Reply::H2(recv, conn) => {
                let chunk = recv.data().await?;
                Some(match chunk {
                    Ok(c) => {
                        let _ = recv.flow_control().release_capacity(c.len());
                        Ok(c)
                    }
                    Err(e) => {
                        if e.is_io() || e.is_go_away() {
                            conn.send.store(None);
                        }
                        Err(e.to_string())
                    }
                })
            }
            Reply::H1(body) => loop {
                match body.frame().await? {
                    Ok(frame) => match frame.into_data() {
                        Ok(data) => return Some(Ok(data)),
                        Err(_) => continue,
                    },
                    Err(e) => return Some(Err(e.to_string())),
                }
            },
        }
    }

    /// The whole body, of at most `wire::MAX_FRAME` bytes (a node, or
    /// something else on its address, may send any amount); one chunk (most
    /// answers) is not copied.
    async fn collect(mut self) -> Result<Bytes, Sent> {
        let over = || Sent::TooLarge(format!("its answer is over {} MiB", wire::MAX_FRAME >> 20));
        let Some(first) = self.chunk().await.transpose().map_err(Sent::Failed)? else {
            return Ok(Bytes::new());
        };
        let Some(second) = self.chunk().await.transpose().map_err(Sent::Failed)? else {
            return if first.len() > wire::MAX_FRAME { Err(over()) } else { Ok(first) };
        };
        let mut out = bytes::BytesMut::from(&first[..]);
        out.extend_from_slice(&second);
        while out.len() <= wire::MAX_FRAME {
            match self.chunk().await {
                Some(chunk) => out.extend_from_slice(&chunk.map_err(Sent::Failed)?),
                None => return Ok(out.freeze()),
            }
        }
        Err(over())
    }

    /// A streamed answer: each response passed on as its frame comes, then
    /// the last, then the body's end. Err: the node broke the stream
    /// (garbage, no last frame, or anything after it). A response the
    /// client cannot take ends the call here, and the stream's reset tells
    /// the node's module (its next `send` fails).
    async fn pass_on(mut self, responses: &wasmscore_engine::Responses) -> Result<Result<ScoreResponse, ScoreError>, String> {
        let mut buf = bytes::BytesMut::new();
        loop {
            while let Some(frame) = wire::Frame::decode(&mut buf, wire::MAX_FRAME)? {
                match frame {
                    wire::Frame::Sent(out) => {
                        if let Err(why) = (responses.0)(out) {
                            return Ok(Err(ScoreError::Call(wasmscore_engine::CallError::Failed(format!(
                                "a response could not be passed on: {why}"
                            )))));
                        }
                    }
                    wire::Frame::Last(last) => {
                        // Read to the end, so the connection stays whole.
                        if !buf.is_empty() {
                            return Err("it sent more after the last response".into());
                        }
                        while let Some(chunk) = self.chunk().await {
                            if !chunk?.is_empty() {
                                return Err("it sent more after the last response".into());
                            }
                        }
                        return Ok(last);
                    }
                }
            }
            match self.chunk().await {
                Some(chunk) => buf.extend_from_slice(&chunk?),
                None => return Err("its stream of responses ended without the last".into()),
            }
        }
    }
}

/// A node's HTTP/2 connection, driven by the `h2` crate from the request's
/// own task (hyper's client adds a hop through its dispatch task per
/// request; BENCHMARKS.md). One connection per node and shard, made on
/// first use and again after it breaks.
struct H2Conn {
    send: arc_swap::ArcSwapOption<h2::client::SendRequest<Bytes>>,
    /// One connect at a time per node, and what the last one that failed
    /// said, with the count of attempts made so far.
    connecting: tokio::sync::Mutex<Option<String>>,
    attempts: AtomicU64,
    keepalive: Duration,
}

impl H2Conn {
    fn new(keepalive: Duration) -> H2Conn {
        H2Conn {
            send: arc_swap::ArcSwapOption::empty(),
            connecting: tokio::sync::Mutex::new(None),
            attempts: AtomicU64::new(0),
            keepalive,
        }
    }

    /// The node's connection, and whether it is one kept from before
    /// (rather than made now).
    ///
    /// A request that waited while another tried to connect, and that
    /// attempt failed, does not try again: it goes to another node at once.
    /// Else, with a node gone dark (no answer to a SYN), the requests
    /// queued behind the lock would each spend their own second, the last
    /// of many past its deadline, never having left the router.
    async fn connection(&self, addr: &str) -> Result<(h2::client::SendRequest<Bytes>, bool), Sent> {
        if let Some(s) = self.send.load_full() {
            return Ok(((*s).clone(), true));
        }
        let seen = self.attempts.load(Ordering::SeqCst);
        let mut last_failure = self.connecting.lock().await;
        if let Some(s) = self.send.load_full() {
            return Ok(((*s).clone(), true));
        }
        // Only a failure: a connection made while it waited, and lost since
        // (a stale one's error cleared it), is made again.
        if let (true, Some(why)) = (self.attempts.load(Ordering::SeqCst) != seen, last_failure.as_deref()) {
            return Err(Sent::NotSent(format!("cannot connect: {why} (tried while this request waited)")));
        }
        let made = self.connect(addr).await;
        self.attempts.fetch_add(1, Ordering::SeqCst);
        *last_failure = match &made {
            Err(Sent::NotSent(why) | Sent::Failed(why) | Sent::TooLarge(why)) => Some(why.clone()),
            Ok(_) => None,
        };
        made
    }

    async fn connect(&self, addr: &str) -> Result<(h2::client::SendRequest<Bytes>, bool), Sent> {
        let not_sent = |e: String| Sent::NotSent(format!("cannot connect: {e}"));
        let tcp = tokio::time::timeout(Duration::from_secs(1), tokio::net::TcpStream::connect(addr))
            .await
            .map_err(|_| not_sent("no connection within 1 s".into()))?
            .map_err(|e| not_sent(e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        let (send, mut conn) = h2::client::Builder::new()
            .initial_window_size(4 << 20)
            .initial_connection_window_size(16 << 20)
            .handshake::<_, Bytes>(tcp)
            .await
            .map_err(|e| not_sent(format!("HTTP/2 handshake: {e}")))?;
        let addr = addr.to_string();
        let mut ping = conn.ping_pong();
        let keepalive = self.keepalive;
        tokio::spawn(async move {
            // A peer gone without a reset (a conntrack entry dropped, a
            // partition) shows no error: a PING unanswered within
            // `keepalive` closes the connection, failing its streams, and
            // the next call makes a new one.
            let alive = async {
                let Some(ping) = ping.as_mut() else {
                    return std::future::pending().await;
                };
                loop {
                    tokio::time::sleep(keepalive).await;
                    match tokio::time::timeout(keepalive, ping.ping(h2::Ping::opaque())).await {
                        Ok(Ok(_)) => {}
                        // The connection's own error ends it.
                        Ok(Err(_)) => return std::future::pending().await,
                        Err(_) => return,
                    }
                }
            };
            tokio::select! {
                ended = conn => if let Err(e) = ended {
                    tracing::debug!(node = %addr, error = %e, "node connection ended");
                },
                () = alive => tracing::warn!(node = %addr, "no answer to a PING within {} ms: node connection closed", keepalive.as_millis()),
            }
        });
        self.send.store(Some(Arc::new(send.clone())));
        Ok((send, false))
    }

    async fn send(&self, addr: &str, req: Request<()>, body: Bytes) -> Result<(http::response::Parts, h2::RecvStream), Sent> {
        // Not ready: the connection is gone; nothing was sent on it. One
        // kept from before may have gone with the process it reached (a
        // node restarted on the same address, while this thread's
        // connection sat unused): then one new connection is tried before
        // the node is called lost.
        let mut retried = false;
        let mut send = loop {
            let (send, kept) = self.connection(addr).await?;
            match send.ready().await {
                Ok(s) => break s,
                Err(e) => {
                    self.send.store(None);
                    if !kept || retried {
                        return Err(Sent::NotSent(format!("connection lost: {e}")));
                    }
                    retried = true;
                }
            }
        };
        let (resp, mut stream) = match send.send_request(req, body.is_empty()) {
            Ok(x) => x,
            Err(e) => {
                self.send.store(None);
                return Err(Sent::NotSent(format!("connection lost: {e}")));
            }
        };
        if !body.is_empty() {
            // Buffered by h2 past the window, sent as the node reads.
            stream.send_data(body, true).map_err(|e| self.failed(e))?;
        }
        let resp = resp.await.map_err(|e| self.failed(e))?;
        Ok(resp.into_parts())
    }

    /// A stream the node refused before reading it (REFUSED_STREAM, or past
    /// a GOAWAY's last stream) was never processed; anything else may have been.
    /// h2 gives the streams past the last one of a GOAWAY the node sent its
    /// reason: NO_ERROR for a node shutting down gracefully.
    fn failed(&self, e: h2::Error) -> Sent {
        if e.is_io() || e.is_go_away() {
            self.send.store(None);
        }
        let refused =
            e.reason() == Some(h2::Reason::REFUSED_STREAM) || (e.is_go_away() && e.is_remote() && e.reason() == Some(h2::Reason::NO_ERROR));
        if refused {
            Sent::NotSent(format!("stream refused: {e}"))
        } else {
            Sent::Failed(e.to_string())
        }
    }
}

/// The innermost cause of a client error ("Connection refused (os error 111)").
fn cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut last = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        last = s.to_string();
        cur = s.source();
    }
    last
}

/// Runs the futures at once and waits for all (tokio has no join_all).
async fn futures_join_all<F: std::future::Future<Output = ()>>(futs: impl Iterator<Item = F>) {
    let mut set: Vec<std::pin::Pin<Box<F>>> = futs.map(Box::pin).collect();
    std::future::poll_fn(|cx| {
        set.retain_mut(|f| f.as_mut().poll(cx).is_pending());
        if set.is_empty() {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_node_that_had_only_the_end_of_the_budget_is_not_ejected_for_missing_it() {
        // A node that answers every request after 300 ms.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut conn = h2::server::handshake(tcp).await.unwrap();
                    while let Some(Ok((_req, mut respond))) = conn.accept().await {
                        tokio::spawn(async move {
                            tokio::time::sleep(Duration::from_millis(300)).await;
                            let _ = respond.send_response(http::Response::new(()), true);
                        });
                    }
                });
            }
        });
        let cfg = NodesConfig {
            timeout: Duration::from_secs(1),
            ..NodesConfig::default()
        };
        let nodes = Nodes::new(("e", "v"), &[addr], NodeHttp::H2, http_client(NodeHttp::H2), cfg).unwrap();
        nodes.nodes[0].ready.store(true, Ordering::Release);
        let call = Call::default();
        // 900 ms of the second went on a wake: 100 ms left for the node.
        let started = Instant::now() - Duration::from_millis(900);
        let r = nodes
            .score_on_ready(wasmscore_engine::ScoreRequest::default(), &call, started)
            .await;
        assert!(matches!(r, Err(ScoreError::NodeTimeout { .. })), "{r:?}");
        assert!(nodes.nodes[0].ready.load(Ordering::Acquire), "ejected: {}", nodes.nodes[0].why());
        assert_eq!(nodes.nodes[0].ejections.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn a_round_of_checks_is_not_started_while_one_is_under_way() {
        // A node that accepts and never answers: each round takes the
        // check timeout.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((tcp, _)) = listener.accept().await {
                held.push(tcp);
            }
        });
        let cfg = NodesConfig {
            check_timeout: Duration::from_millis(300),
            ..NodesConfig::default()
        };
        let nodes = Arc::new(Nodes::new(("e", "v"), &[addr], NodeHttp::H2, http_client(NodeHttp::H2), cfg).unwrap());
        let first = tokio::spawn({
            let nodes = nodes.clone();
            async move { nodes.check_unless_checking().await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        let t = Instant::now();
        nodes.check_unless_checking().await;
        assert!(t.elapsed() < Duration::from_millis(100), "a second round waited {:?}", t.elapsed());
        first.await.unwrap();
        assert!(
            nodes.nodes[0].why().contains("health check took over 300 ms"),
            "{}",
            nodes.nodes[0].why()
        );
        // Once it is over, the next round runs.
        let t = Instant::now();
        nodes.check_unless_checking().await;
        assert!(t.elapsed() >= Duration::from_millis(250), "{:?}", t.elapsed());
    }

    #[tokio::test]
    async fn requests_queued_behind_a_connect_that_fails_do_not_each_try_again() {
        // A listener that never accepts, its backlog filled: a SYN to it
        // gets no answer, as from a host gone dark.
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let listener = socket.listen(1).unwrap();
        let addr = listener.local_addr().unwrap();
        let mut filled = Vec::new();
        for _ in 0..8 {
            match tokio::time::timeout(Duration::from_millis(200), tokio::net::TcpStream::connect(addr)).await {
                Ok(Ok(c)) => filled.push(c),
                _ => break,
            }
        }
        let conn = H2Conn::new(Duration::from_secs(10));
        let (started, addr) = (Instant::now(), addr.to_string());
        let calls = (0..6).map(|_| conn.connection(&addr));
        let mut results = Vec::new();
        for r in futures_util::future::join_all(calls).await {
            results.push(r);
        }
        assert!(results.iter().all(|r| matches!(r, Err(Sent::NotSent(_)))));
        assert!(
            started.elapsed() < Duration::from_millis(1_800),
            "six requests took {:?}: each spent its own second",
            started.elapsed()
        );
        drop((listener, filled));
    }

    /// An HTTP/2 server that answers one request on each connection, then
    /// stops reading it (a peer gone without a reset); it counts connections.
    async fn answers_once_then_goes_quiet() -> (String, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let conns = Arc::new(AtomicUsize::new(0));
        let count = conns.clone();
        tokio::spawn(async move {
            let mut quiet = Vec::new();
            while let Ok((tcp, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::Relaxed);
                let mut conn = h2::server::handshake(tcp).await.unwrap();
                let (_req, mut respond) = conn.accept().await.unwrap().unwrap();
                respond.send_response(http::Response::new(()), true).unwrap();
                // Polled a little longer, so the answer goes out; then never.
                let _ = tokio::time::timeout(Duration::from_millis(50), conn.accept()).await;
                quiet.push(conn);
            }
        });
        (addr, conns)
    }

    #[tokio::test]
    async fn a_stream_past_a_graceful_goaway_was_not_sent() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            let (mut tcp, _) = listener.accept().await.unwrap();
            let mut preface = [0u8; 24];
            tcp.read_exact(&mut preface).await.unwrap();
            // Read frames up to the request's HEADERS, then answer with
            // SETTINGS and a GOAWAY (NO_ERROR) whose last stream is 0: a
            // node shutting down that never read the request.
            loop {
                let mut head = [0u8; 9];
                tcp.read_exact(&mut head).await.unwrap();
                let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
                let mut payload = vec![0u8; len];
                tcp.read_exact(&mut payload).await.unwrap();
                if head[3] == 0x1 {
                    break;
                }
            }
            let settings = [0, 0, 0, 0x4, 0, 0, 0, 0, 0];
            let goaway = [0, 0, 8, 0x7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
            tcp.write_all(&[&settings[..], &goaway[..]].concat()).await.unwrap();
            let mut rest = Vec::new();
            let _ = tcp.read_to_end(&mut rest).await;
        });
        let conn = H2Conn::new(Duration::from_secs(10));
        let req = Request::builder().uri(format!("http://{addr}/")).body(()).unwrap();
        let sent = tokio::time::timeout(Duration::from_secs(5), conn.send(&addr, req, Bytes::new()))
            .await
            .expect("an answer");
        assert!(matches!(sent, Err(Sent::NotSent(_))), "another node may take it");
    }

    #[tokio::test]
    async fn a_new_node_set_keeps_the_counters_of_the_nodes_that_stay() {
        let set = |addrs: &[&str]| {
            let addrs: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
            Nodes::new(("e", "v"), &addrs, NodeHttp::H2, http_client(NodeHttp::H2), NodesConfig::default()).unwrap()
        };
        let old = set(&["10.0.0.1:8081", "10.0.0.2:8081"]);
        for (i, node) in old.nodes.iter().enumerate() {
            node.served.store(10 + i as u64, Ordering::Relaxed);
            node.failed.store(2, Ordering::Relaxed);
            node.ejections.store(1, Ordering::Relaxed);
        }
        old.retried.store(3, Ordering::Relaxed);
        // A scale-up: node 2 stays, node 3 is new, node 1 went.
        let new = set(&["10.0.0.2:8081", "10.0.0.3:8081"]);
        new.inherit(&old);
        let counts = |n: &Node| [&n.served, &n.failed, &n.ejections].map(|c| c.load(Ordering::Relaxed));
        assert_eq!(counts(&new.nodes[0]), [11, 2, 1]);
        assert_eq!(counts(&new.nodes[1]), [0, 0, 0]);
        assert_eq!(new.retried.load(Ordering::Relaxed), 3);
    }

    #[tokio::test]
    async fn a_connection_whose_peer_went_quiet_is_closed_and_made_again() {
        let (addr, conns) = answers_once_then_goes_quiet().await;
        let conn = H2Conn::new(Duration::from_millis(100));
        let call = || async {
            let req = Request::builder().uri(format!("http://{addr}/")).body(()).unwrap();
            tokio::time::timeout(Duration::from_secs(5), conn.send(&addr, req, Bytes::new()))
                .await
                .map(|r| r.map(|(parts, _)| parts.status).map_err(|_| "failed"))
        };
        assert_eq!(call().await, Ok(Ok(http::StatusCode::OK)));
        // Unanswered PINGs close the first connection; the next call makes
        // a second instead of waiting on the quiet one.
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(
            call().await,
            Ok(Ok(http::StatusCode::OK)),
            "the call waited on the quiet connection"
        );
        assert_eq!(conns.load(Ordering::Relaxed), 2);
    }
}
