//! The fleet: the router's endpoints, their versions' nodes, their health,
//! the split published to the router, and the autoscaler across nodes.
//!
//! One task runs it, off the request path: it applies each new spec from
//! discovery, checks every node's health twice a second, samples each
//! version's demand ten times a second for the autoscaler, and publishes an
//! endpoint's table again whenever a version gains or loses its last ready
//! node (ejections and drains seen on the request path count at once).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use wasmscore_remote::nodes::{http_client, HttpClient};
use wasmscore_remote::{NodeHttp, Nodes, NodesConfig};
use wasmscore_router::{Endpoint, Policy, Replicas, Router, Version};
use wasmscore_rules::autoscale;
use wasmscore_rules::rollout::{self, Rollout};
use wasmscore_server::{Answer, Plane};

use crate::config::{AuthSpec, EndpointSpec, FleetSpec, VersionSpec};
use crate::discovery::Discovery;
use wasmscore_replica::histogram::label;

/// Where the autoscaler's decisions go: the operator scales the version's
/// Deployment; with file discovery a person (or a script) starts nodes.
pub trait Scaler: Send + Sync + 'static {
    fn scale(&self, endpoint: &str, version: &str, from: usize, to: usize, reason: &str);
    /// What the status route says of it (where decisions go, whether this
    /// router applies them).
    fn describe(&self) -> Value;
}

/// Logs each decision: file discovery cannot start nodes itself. The
/// desired count is also in `/metrics` and the status route.
pub struct LogScaler;

impl Scaler for LogScaler {
    fn scale(&self, endpoint: &str, version: &str, from: usize, to: usize, reason: &str) {
        tracing::info!(
            endpoint,
            version,
            from,
            to,
            reason,
            "autoscaler: desired nodes changed (start or stop nodes to follow)"
        );
    }

    fn describe(&self) -> Value {
        json!({"kind": "log", "applies": false})
    }
}

/// A margin past the version's scoring timeout for the node's own 504 to
/// reach the router before the router gives up on the node.
const DEADLINE_MARGIN: Duration = Duration::from_secs(1);
const TICK: Duration = Duration::from_millis(100);
/// Health checks every this many ticks.
const CHECK_EVERY: u32 = 5;

struct VersionState {
    spec: VersionSpec,
    nodes: Arc<Nodes>,
    version: Arc<Version>,
    scaler: Option<autoscale::Scaler>,
    /// What the autoscaler last asked for (the node count when it is off).
    desired: usize,
    last_reason: String,
}

impl VersionState {
    /// Takes its share: a ready node, or at zero with min 0 (no node, or
    /// scaled to zero and the last ones draining): the first request wakes
    /// it, and requests wait for its node, bounded. A version that should
    /// have nodes and has no ready one gives its share to the default.
    fn serving(&self) -> bool {
        self.nodes.ready_count() > 0 || (self.nodes.wakes() && (self.nodes.is_empty() || self.desired == 0))
    }
}

struct EndpointState {
    spec: EndpointSpec,
    versions: Vec<VersionState>,
    /// Which versions had a ready node when the table was last published.
    published: Vec<bool>,
}

pub struct Fleet {
    router: Router,
    /// Requests that found a version at zero say so here (endpoint, version).
    wakes: tokio::sync::mpsc::UnboundedSender<(String, String)>,
    woken: Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<(String, String)>>>,
    /// The control side's state; the request path never takes this lock
    /// (it reads the router's published tables).
    state: Mutex<Vec<EndpointState>>,
    client: HttpClient,
    http: NodeHttp,
    ready: AtomicBool,
    scaler: Box<dyn Scaler>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Fleet {
    pub fn new(scaler: Box<dyn Scaler>, http: NodeHttp) -> Arc<Fleet> {
        let (wakes, woken) = tokio::sync::mpsc::unbounded_channel();
        Arc::new(Fleet {
            router: Router::new(),
            wakes,
            woken: Mutex::new(Some(woken)),
            state: Mutex::new(Vec::new()),
            // Health checks go through hyper's client (HTTP/1.1 or 2 as
            // asked); requests over HTTP/2 through each node's own h2 connection.
            client: http_client(http),
            http,
            ready: AtomicBool::new(false),
            scaler,
        })
    }

    /// Follows discovery until its source goes away.
    pub async fn run(self: Arc<Self>, discovery: &dyn Discovery) {
        let mut rx = discovery.subscribe();
        let mut woken = lock(&self.woken).take().expect("a fleet runs once");
        let first = rx.borrow_and_update().clone();
        self.apply(&first);
        self.check_all().await;
        self.publish(true);
        self.ready.store(true, Ordering::Release);
        tracing::info!(endpoints = first.endpoints.len(), "router config applied; serving");
        let mut tick = tokio::time::interval(TICK);
        // After a slow round of checks, carry on; do not catch up in a burst.
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut ticks = 0u32;
        loop {
            tokio::select! {
                changed = rx.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let spec = rx.borrow_and_update().clone();
                    self.apply(&spec);
                    self.check_all().await;
                    self.publish(true);
                }
                Some((endpoint, version)) = woken.recv() => self.wake(&endpoint, &version),
                _ = tick.tick() => {
                    ticks = ticks.wrapping_add(1);
                    if ticks.is_multiple_of(CHECK_EVERY) {
                        self.start_checks();
                    }
                    self.autoscale(Instant::now());
                    self.publish(false);
                }
            }
        }
    }

    /// Takes a new spec: versions whose nodes and settings did not change
    /// keep their node state (health, ejections, connections).
    fn apply(&self, spec: &FleetSpec) {
        let mut state = lock(&self.state);
        let mut old: HashMap<(String, String), VersionState> = HashMap::new();
        let old_names: Vec<String> = state.iter().map(|e| e.spec.name.clone()).collect();
        // Each endpoint's split before: a new one restarts the split check.
        let old_shares: HashMap<String, Vec<(String, u32)>> = state.iter().map(|e| (e.spec.name.clone(), shares(&e.spec))).collect();
        for ep in state.drain(..) {
            for v in ep.versions {
                old.insert((ep.spec.name.clone(), v.spec.name.clone()), v);
            }
        }
        for ep in &spec.endpoints {
            let mut versions = Vec::new();
            for v in &ep.versions {
                let resolved = v.resolved().expect("checked when the spec was parsed");
                // The longest a node may take to answer itself: a wait in its
                // queue, the scoring timeout, and the pool's grace for a call
                // blocked in the host (1 s); then the margin.
                let cfg = NodesConfig {
                    timeout: resolved.pool.max_wait + resolved.timeout + Duration::from_secs(1) + DEADLINE_MARGIN,
                    artifact: v.artifact_digest().map(str::to_string),
                    decoupled: resolved.decoupled,
                    ..NodesConfig::default()
                };
                let prev = old.remove(&(ep.name.clone(), v.name.clone()));
                // Its figures live as long as the version does.
                let stats = prev.as_ref().map(|p| p.version.stats.clone()).unwrap_or_default();
                let fresh_nodes = || {
                    let nodes = Nodes::new((&ep.name, &v.name), &v.nodes, self.http, self.client.clone(), cfg.clone())
                        .expect("node addresses were checked");
                    // With min 0 a version may sit at zero: a request wakes it
                    // and waits up to its scoring timeout for the first node.
                    let nodes = match &resolved.autoscale {
                        Some(a) if a.min == 0 => {
                            let (wakes, key) = (self.wakes.clone(), (ep.name.clone(), v.name.clone()));
                            nodes.wakes_with(move || drop(wakes.send(key.clone())), resolved.timeout)
                        }
                        _ => nodes,
                    };
                    Arc::new(nodes)
                };
                let fresh_scaler = || {
                    resolved
                        .autoscale
                        .clone()
                        .map(|a| autoscale::Scaler::new(a, resolved.pool.max_concurrent, Instant::now(), v.nodes.len()))
                };
                let (nodes, scaler, desired, last_reason) = match prev {
                    None => (fresh_nodes(), fresh_scaler(), v.nodes.len(), String::new()),
                    Some(p) => {
                        let same_nodes = p.spec.nodes == v.nodes && p.nodes.config() == &cfg;
                        let same_config = p.spec.config == v.config;
                        let nodes = if same_nodes && same_config {
                            p.nodes.clone()
                        } else {
                            let n = fresh_nodes();
                            n.inherit(&p.nodes);
                            p.nodes.replaced_by(&n);
                            n
                        };
                        // Nodes come and go as the autoscaler asks (on
                        // Kubernetes, as pods start and stop): it keeps its
                        // state until the config changes. What it moves
                        // from is what it asked for, or more if more nodes
                        // came (someone else started them: a person, or the
                        // API server's default of one replica).
                        if same_config {
                            (nodes, p.scaler, p.desired.max(v.nodes.len()), p.last_reason)
                        } else {
                            (nodes, fresh_scaler(), v.nodes.len(), String::new())
                        }
                    }
                };
                versions.push(VersionState {
                    spec: v.clone(),
                    version: Arc::new(Version {
                        name: v.name.clone(),
                        replicas: Replicas::Remote(nodes.clone()),
                        stats,
                    }),
                    nodes,
                    scaler,
                    desired,
                    last_reason,
                });
            }
            if old_shares.get(&ep.name).is_some_and(|s| *s != shares(ep)) {
                for v in &versions {
                    v.version.stats.restart_split_check();
                }
            }
            state.push(EndpointState {
                spec: ep.clone(),
                published: Vec::new(),
                versions,
            });
        }
        // Endpoints that are gone stop being served.
        let names: Vec<String> = state.iter().map(|e| e.spec.name.clone()).collect();
        for ep in old_names {
            if !names.contains(&ep) {
                self.router.remove(&ep);
            }
        }
    }

    /// Starts a round of health checks of each version whose last round
    /// is over, without waiting for them: a node that takes its whole check
    /// timeout holds up neither the other versions' checks nor this loop's
    /// wakes, scaling and publishing (which takes their results on its next
    /// tick).
    fn start_checks(&self) {
        for nodes in lock(&self.state).iter().flat_map(|e| e.versions.iter().map(|v| v.nodes.clone())) {
            tokio::spawn(async move { nodes.check_unless_checking().await });
        }
    }

    async fn check_all(&self) {
        let all: Vec<Arc<Nodes>> = lock(&self.state)
            .iter()
            .flat_map(|e| e.versions.iter().map(|v| v.nodes.clone()))
            .collect();
        let checks: Vec<_> = all
            .into_iter()
            .map(|n| tokio::spawn(async move { n.check_unless_checking().await }))
            .collect();
        for c in checks {
            let _ = c.await;
        }
    }

    /// Publishes each endpoint whose serving versions changed (or all).
    fn publish(&self, all: bool) {
        let mut state = lock(&self.state);
        for ep in state.iter_mut() {
            let serving: Vec<bool> = ep.versions.iter().map(VersionState::serving).collect();
            if !all && serving == ep.published {
                continue;
            }
            self.router.publish(table(ep, &serving));
            ep.published = serving;
        }
    }

    /// A request found VERSION at zero: ask for one node (once; the
    /// requests after it wait for the same node).
    fn wake(&self, endpoint: &str, version: &str) {
        let mut state = lock(&self.state);
        let Some(v) = state
            .iter_mut()
            .filter(|e| e.spec.name == endpoint)
            .flat_map(|e| e.versions.iter_mut())
            .find(|v| v.spec.name == version)
        else {
            return;
        };
        if v.desired == 0 {
            let reason = "a request arrived while it was scaled to zero".to_string();
            self.scaler.scale(endpoint, version, 0, 1, &reason);
            v.desired = 1;
            v.last_reason = reason;
        }
    }

    fn autoscale(&self, now: Instant) {
        let mut state = lock(&self.state);
        for ep in state.iter_mut() {
            for v in ep.versions.iter_mut() {
                let Some(scaler) = v.scaler.as_mut() else {
                    continue;
                };
                scaler.sample(v.nodes.demand());
                // What the version is moving to, as under `up` (the pool's
                // target): the nodes follow the Scaler, not the other way.
                // No CPU limit: a node is one replica with cores of its own.
                if let Some(d) = scaler.decide(now, v.desired, None) {
                    if d.to != v.desired {
                        self.scaler.scale(&ep.spec.name, &v.spec.name, v.desired, d.to, &d.reason);
                        v.desired = d.to;
                        v.last_reason = d.reason;
                    }
                }
            }
        }
    }

    /// The verdict (wasmscore-rules' verdict.rs) from the requests this
    /// router routed since it started: error rate and latency. The numbers
    /// modules report are kept on their nodes and are not in it.
    pub fn compare(&self, endpoint: &str, alpha: f64) -> Result<Value, (u16, &'static str, String)> {
        use std::sync::atomic::Ordering;
        let state = lock(&self.state);
        let ep = state
            .iter()
            .find(|e| e.spec.name == endpoint)
            .ok_or_else(|| (404, "not_found", format!("no endpoint named {endpoint:?}")))?;
        let shares = shares(&ep.spec);
        let arm = |v: &VersionState| {
            let st = &v.version.stats;
            let answers = |i: usize| st.responses[i].load(Ordering::Relaxed);
            wasmscore_rules::verdict::Arm {
                name: v.spec.name.clone(),
                share: shares.iter().find(|(n, _)| *n == v.spec.name).map_or(0, |(_, s)| *s),
                requests: (0..5).map(answers).sum(),
                split: st.split.load(Ordering::Relaxed),
                errors: answers(4),
                latency: st.duration.counts(),
                reported: Vec::new(),
            }
        };
        let control = ep.versions.iter().find(|v| v.spec.control).ok_or_else(|| {
            (
                409,
                "conflict",
                format!("endpoint {endpoint:?} has no control version to compare with: set \"control\": true on one"),
            )
        })?;
        let treatments: Vec<_> = ep
            .versions
            .iter()
            .filter(|v| !v.spec.control && v.spec.mirror == 0)
            .map(arm)
            .collect();
        let verdict = wasmscore_rules::verdict::compare(&arm(control), &treatments, &wasmscore_replica::histogram::BUCKETS, alpha);
        Ok(json!({"endpoint": endpoint, "verdict": verdict}))
    }

    /// The status route: endpoints, versions, their nodes and the desired
    /// replica counts.
    pub fn status(&self) -> Value {
        let state = lock(&self.state);
        let endpoints: Vec<Value> = state
            .iter()
            .map(|ep| {
                let shares = self.router.endpoint(&ep.spec.name).map(|e| e.shares()).unwrap_or_default();
                let versions: Vec<Value> = ep
                    .versions
                    .iter()
                    .map(|v| {
                        let effective = shares.iter().find(|(n, _)| *n == v.spec.name).map(|(_, s)| *s).unwrap_or(0);
                        json!({
                            "name": v.spec.name,
                            "traffic": v.spec.traffic,
                            "effective_traffic": effective,
                            "default": v.spec.default,
                            "control": v.spec.control,
                            "mirror": v.spec.mirror,
                            "state": if v.serving() { "Healthy" } else { "Unhealthy" },
                            "reason": match (v.nodes.ready_count() > 0, v.serving()) {
                                (true, _) => String::new(),
                                (false, true) => "scaled to zero; the next request wakes it".into(),
                                (false, false) => v.nodes.why_unavailable(),
                            },
                            "nodes": v.nodes.views(),
                            "ready_nodes": v.nodes.ready_count(),
                            "desired_replicas": v.desired,
                            "autoscale": v.scaler.is_some(),
                            "last_scale_reason": v.last_reason,
                            "demand": v.nodes.demand(),
                            "retried": v.nodes.retried.load(Ordering::Relaxed),
                        })
                    })
                    .collect();
                json!({"name": ep.spec.name, "versions": versions})
            })
            .collect();
        json!({"endpoints": endpoints, "scaler": self.scaler.describe()})
    }
}

/// An endpoint's configured split.
fn shares(ep: &EndpointSpec) -> Vec<(String, u32)> {
    let rollouts: Vec<Rollout> = ep.versions.iter().map(|v| v.rollout()).collect();
    rollout::shares(&rollouts)
}

/// An endpoint's routing table: the split by the rules, with the shares of
/// versions without a ready node given to the default.
fn table(ep: &EndpointState, serving: &[bool]) -> Endpoint {
    let rollouts: Vec<Rollout> = ep.versions.iter().map(|v| v.spec.rollout()).collect();
    let is_serving = |name: &str| ep.versions.iter().zip(serving).any(|(v, s)| *s && v.spec.name == name);
    let shares = rollout::effective_shares(&rollouts, is_serving);
    let find = |name: &str| ep.versions.iter().find(|v| v.spec.name == name).map(|v| v.version.clone());
    let split: Vec<(Arc<Version>, u32)> = shares
        .iter()
        .filter(|(_, s)| *s > 0)
        .filter_map(|(n, s)| find(n).map(|v| (v, *s)))
        .collect();
    let others = ep
        .versions
        .iter()
        .zip(serving)
        .filter(|(v, s)| **s && !split.iter().any(|(x, _)| x.name == v.spec.name))
        .map(|(v, _)| v.version.clone())
        .collect();
    let mirror = ep
        .versions
        .iter()
        .zip(serving)
        .find(|(v, s)| **s && v.spec.mirror > 0)
        .map(|(v, _)| (v.version.clone(), v.spec.mirror));
    let not_ready = ep
        .versions
        .iter()
        .zip(serving)
        .filter(|(_, s)| !**s)
        .map(|(v, _)| (v.spec.name.clone(), format!("Unhealthy: {}", v.nodes.why_unavailable())))
        .collect();
    let auth = match &ep.spec.auth {
        AuthSpec::Key {
            primary_key,
            secondary_key,
        } => Policy::keys(primary_key, secondary_key),
        AuthSpec::Token { signing_keys } => Policy::Tokens {
            audience: ep.spec.name.clone(),
            keys: signing_keys.iter().map(|k| k.key()).collect(),
        },
        AuthSpec::None => Policy::Open,
    };
    Endpoint::new(&ep.spec.name, split, others, mirror, not_ready).with_auth(auth)
}

impl Plane for Fleet {
    fn router(&self) -> &Router {
        &self.router
    }

    fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    fn metrics(&self) -> String {
        use std::fmt::Write;
        let state = lock(&self.state);
        let mut out = String::new();
        let mut family = |name: &str, kind: &str, help: &str, rows: &mut dyn Iterator<Item = (String, f64)>| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, v) in rows {
                let _ = writeln!(out, "{name}{{{labels}}} {v}");
            }
        };
        let versions: Vec<(&EndpointSpec, &VersionState)> =
            state.iter().flat_map(|e| e.versions.iter().map(move |v| (&e.spec, v))).collect();
        let vl = |e: &EndpointSpec, v: &VersionState| format!("endpoint=\"{}\",version=\"{}\"", label(&e.name), label(&v.spec.name));
        family(
            "wasmscore_router_version_nodes",
            "gauge",
            "Nodes listed for the version.",
            &mut versions.iter().map(|(e, v)| (vl(e, v), v.spec.nodes.len() as f64)),
        );
        family(
            "wasmscore_router_version_ready_nodes",
            "gauge",
            "Nodes that take requests now.",
            &mut versions.iter().map(|(e, v)| (vl(e, v), v.nodes.ready_count() as f64)),
        );
        family(
            "wasmscore_router_version_desired_replicas",
            "gauge",
            "Nodes the autoscaler asks for.",
            &mut versions.iter().map(|(e, v)| (vl(e, v), v.desired as f64)),
        );
        family(
            "wasmscore_router_version_demand",
            "gauge",
            "Busy instances plus waiting requests across the version's nodes.",
            &mut versions.iter().map(|(e, v)| (vl(e, v), v.nodes.demand() as f64)),
        );
        family(
            "wasmscore_router_version_retried_total",
            "counter",
            "Requests sent again to another node (refused connection, drain).",
            &mut versions
                .iter()
                .map(|(e, v)| (vl(e, v), v.nodes.retried.load(Ordering::Relaxed) as f64)),
        );
        let nodes: Vec<(String, wasmscore_remote::NodeView)> = versions
            .iter()
            .flat_map(|(e, v)| {
                let l = vl(e, v);
                v.nodes
                    .views()
                    .into_iter()
                    .map(move |n| (format!("{l},node=\"{}\"", label(&n.addr)), n))
            })
            .collect();
        family(
            "wasmscore_router_node_ready",
            "gauge",
            "1 when the node takes requests.",
            &mut nodes.iter().map(|(l, n)| (l.clone(), f64::from(u8::from(n.ready)))),
        );
        family(
            "wasmscore_router_node_outstanding",
            "gauge",
            "Requests this router has in flight on the node.",
            &mut nodes.iter().map(|(l, n)| (l.clone(), n.outstanding as f64)),
        );
        family(
            "wasmscore_router_node_requests_total",
            "counter",
            "Requests the node answered (the module's errors included).",
            &mut nodes.iter().map(|(l, n)| (l.clone(), n.served as f64)),
        );
        family(
            "wasmscore_router_node_failures_total",
            "counter",
            "Node-level failures: refused, reset, garbage, no answer in time.",
            &mut nodes.iter().map(|(l, n)| (l.clone(), n.failed as f64)),
        );
        family(
            "wasmscore_router_node_ejections_total",
            "counter",
            "Times the node was ejected.",
            &mut nodes.iter().map(|(l, n)| (l.clone(), n.ejections as f64)),
        );
        let timed: Vec<(String, &wasmscore_router::VersionStats)> = versions
            .iter()
            .map(|(e, v)| (format!("{},role=\"{}\"", vl(e, v), v.spec.rollout().role()), &*v.version.stats))
            .collect();
        wasmscore_router::render_version_stats(&mut out, &timed);
        out
    }

    fn model_ready(&self, endpoint: &str, version: Option<&str>) -> Result<(bool, Value), (u16, &'static str, String)> {
        let state = lock(&self.state);
        let ep = state
            .iter()
            .find(|e| e.spec.name == endpoint)
            .ok_or_else(|| (404, "not_found", format!("no service named {endpoint:?}")))?;
        match version {
            Some(name) => {
                let v = ep
                    .versions
                    .iter()
                    .find(|v| v.spec.name == name)
                    .ok_or_else(|| (404, "not_found", format!("service {endpoint:?} has no version {name:?}")))?;
                let ready = v.nodes.ready_count() > 0;
                let body = if ready {
                    json!({"name": endpoint, "version": name, "ready": true, "state": "Healthy"})
                } else {
                    json!({"name": endpoint, "version": name, "ready": false, "state": "Unhealthy", "reason": v.nodes.why_unavailable()})
                };
                Ok((ready, body))
            }
            None => {
                let ready = ep.versions.iter().any(|v| v.spec.mirror == 0 && v.nodes.ready_count() > 0);
                let body = if ready {
                    json!({"name": endpoint, "ready": true})
                } else {
                    let why: Vec<String> = ep
                        .versions
                        .iter()
                        .map(|v| format!("{}: {}", v.spec.name, v.nodes.why_unavailable()))
                        .collect();
                    json!({"name": endpoint, "ready": false, "reason": why.join("; ")})
                };
                Ok((ready, body))
            }
        }
    }

    fn versions(&self) -> Vec<(String, String, Option<String>)> {
        let state = lock(&self.state);
        let mut out = Vec::new();
        for ep in state.iter() {
            for v in &ep.versions {
                let why = (v.nodes.ready_count() == 0).then(|| format!("Unhealthy: {}", v.nodes.why_unavailable()));
                out.push((ep.spec.name.clone(), v.spec.name.clone(), why));
            }
        }
        out
    }

    /// The router does not load the models, its nodes do: the inputs and
    /// outputs are those the pinned (or default) version's nodes reported
    /// in their ready answer; empty until one did.
    fn model_metadata(&self, endpoint: &str, version: Option<&str>) -> Result<Value, (u16, &'static str, String)> {
        let state = lock(&self.state);
        let ep = state
            .iter()
            .find(|e| e.spec.name == endpoint)
            .ok_or_else(|| (404, "not_found", format!("no service named {endpoint:?}")))?;
        let mut versions: Vec<&str> = ep.versions.iter().map(|v| v.spec.name.as_str()).collect();
        if let Some(name) = version {
            if !versions.contains(&name) {
                return Err((404, "not_found", format!("service {endpoint:?} has no version {name:?}")));
            }
            versions.retain(|n| *n == name);
        }
        let chosen = match version {
            Some(name) => ep.versions.iter().find(|v| v.spec.name == name),
            None => ep.versions.iter().find(|v| v.spec.default),
        };
        let sig = chosen
            .and_then(|v| v.nodes.signature())
            .unwrap_or_else(|| json!({"inputs": [], "outputs": []}));
        Ok(json!({"name": endpoint, "versions": versions, "platform": "wasmscore", "inputs": sig["inputs"], "outputs": sig["outputs"]}))
    }

    async fn admin(self: &Arc<Self>, method: &str, path: &str, query: &str, _body: Vec<u8>) -> Answer {
        let error = |status: u16, code: &str, message: String| Answer {
            status,
            body: json!({"error": {"code": code, "message": message}}),
        };
        let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
        match (method, segs.as_slice()) {
            ("GET", ["admin", "v1", "status"]) => Answer {
                status: 200,
                body: self.status(),
            },
            ("GET", ["admin", "v1", "endpoints", ep, "compare"]) => {
                let alpha = match query.split('&').filter_map(|kv| kv.split_once('=')).find(|(k, _)| *k == "alpha") {
                    Some((_, a)) => match a.parse::<f64>().ok().filter(|a| *a > 0.0 && *a < 0.5) {
                        Some(a) => a,
                        None => return error(400, "bad_request", format!("alpha must be a number in (0, 0.5), got {a:?}")),
                    },
                    None => 0.05,
                };
                match self.compare(ep, alpha) {
                    Ok(body) => Answer { status: 200, body },
                    Err((status, code, message)) => error(status, code, message),
                }
            }
            _ => error(
                404,
                "not_found",
                format!("the router serves GET /admin/v1/status and /admin/v1/endpoints/E/compare; change endpoints and versions in its config file ({method} {path})"),
            ),
        }
    }
}
