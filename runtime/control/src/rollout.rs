//! Endpoints and their versions: each change is checked against the rollout
//! rules, committed to the store, acknowledged, and published to the router
//! as a new immutable table. A version whose module, models or config change
//! is (re)built off the request; it takes traffic only once its replicas ran
//! init(), and until then the version it replaces keeps serving. A version
//! removed from the table drains: requests that hold it finish on it.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Deserialize;
use wasmscore_engine::VersionContext;
use wasmscore_router::{Endpoint, Version};

use crate::access::{self, AuthSettings};
use crate::counters::{spec_sha, Counters};
use crate::deploy::{lock, valid_name, Built, Control, ModelRef, VersionSpec};
use crate::rules::{self, Rollout, RolloutChange};
use crate::store::{new_key, now_rfc3339, AuthMode, EndpointRow, Store, Tags, VersionRow};
use crate::ControlError;

/// Deploy events kept per version for `logs`.
const EVENTS_KEPT: usize = 200;

pub(crate) struct Inner {
    pub store: Store,
    pub endpoints: BTreeMap<String, EndpointState>,
}

impl Inner {
    pub fn new(store: Store) -> Self {
        Inner {
            store,
            endpoints: BTreeMap::new(),
        }
    }
}

pub(crate) struct EndpointState {
    pub row: EndpointRow,
    /// In creation order.
    pub versions: Vec<VersionState>,
}

impl EndpointState {
    /// A new split: the split check's counts start again, as the ones
    /// before were made under other shares (the rest of the verdict's
    /// counts stay).
    fn restart_split_check(&self) {
        for b in self.versions.iter().filter_map(|v| v.live.as_ref()) {
            b.version.stats.restart_split_check();
        }
    }
}

/// Where a version's latest build stands.
#[derive(Clone, Debug)]
pub(crate) enum Phase {
    Building(String),
    Done,
    Failed(String),
}

pub(crate) struct VersionState {
    pub row: VersionRow,
    /// What serves now (possibly an older spec while a new one builds).
    pub live: Option<Built>,
    /// Generation of the latest build asked for, and of the latest finished.
    pub target: u64,
    pub done: u64,
    pub phase: Phase,
    /// The last failed build's error, kept after a failed update rolled back.
    pub last_error: Option<String>,
    pub events: VecDeque<(u128, String)>,
    /// The context of the latest build, for the module's own log lines.
    pub ctx: Option<Arc<VersionContext>>,
}

impl VersionState {
    pub fn event(&mut self, msg: String) {
        let ms = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0);
        if self.events.len() == EVENTS_KEPT {
            self.events.pop_front();
        }
        self.events.push_back((ms, msg));
    }

    pub fn state(&self) -> &'static str {
        match (&self.phase, &self.live) {
            (Phase::Building(_), _) => "Transitioning",
            (_, Some(b)) if !b.monitor.ready => "Unhealthy",
            (_, Some(b)) => {
                let st = b.pool.stats();
                let running = st.instances.load(Ordering::Relaxed) + st.starting.load(Ordering::Relaxed);
                // Scaled to zero on purpose is healthy: the next request wakes it.
                if running > 0 || st.target.load(Ordering::Relaxed) == 0 {
                    "Healthy"
                } else {
                    "Unhealthy"
                }
            }
            (_, None) => "Failed",
        }
    }

    /// Serving, and not taken out of the split by the monitor.
    pub fn takes_traffic(&self) -> bool {
        self.live.as_ref().is_some_and(|b| b.monitor.ready)
    }
}

/// A create, update or replace of one version, as the admin API takes it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VersionRequest {
    #[serde(default)]
    pub module: Option<String>,
    #[serde(default)]
    pub module_name: Option<String>,
    #[serde(default)]
    pub models: Option<Vec<ModelRef>>,
    #[serde(default)]
    pub config: Option<serde_json::Value>,
    #[serde(default)]
    pub traffic: Option<u32>,
    #[serde(default)]
    pub default: Option<bool>,
    #[serde(default)]
    pub control: Option<bool>,
    #[serde(default)]
    pub mirror: Option<u32>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub tags: Option<Tags>,
}

impl VersionRequest {
    fn rollout(&self) -> RolloutChange {
        RolloutChange {
            traffic: self.traffic,
            default: self.default,
            control: self.control,
            mirror: self.mirror,
        }
    }
    fn touches_spec(&self) -> bool {
        self.module.is_some() || self.models.is_some() || self.config.is_some()
    }
}

/// What a change answers: the endpoint as shown, and the generation of the
/// build it started, if any (`--wait` follows it).
pub struct Accepted {
    pub building: Option<u64>,
    pub service: serde_json::Value,
}

#[derive(Clone, Copy, PartialEq)]
pub enum Mode {
    Create,
    Update,
    /// Create, or replace the module of an existing version (`deploy`).
    Put,
}

impl Control {
    /// Creates an empty endpoint.
    pub fn create_endpoint(
        &self,
        name: &str,
        description: &str,
        tags: Tags,
        auth: &AuthSettings,
    ) -> Result<serde_json::Value, ControlError> {
        valid_name("endpoint", name)?;
        let mut inner = lock(&self.inner);
        if inner.endpoints.contains_key(name) {
            return Err(ControlError::Conflict(format!("endpoint {name:?} already exists")));
        }
        let mut row = new_endpoint_row(name, description, tags);
        auth.apply(&mut row)?;
        inner.store.commit_endpoint(&row, &[], &[])?;
        inner.endpoints.insert(name.into(), EndpointState { row, versions: Vec::new() });
        self.publish(&inner, name);
        Ok(self.show_locked(&inner, name).expect("just made"))
    }

    pub fn delete_endpoint(&self, endpoint: &str) -> Result<serde_json::Value, ControlError> {
        let mut inner = lock(&self.inner);
        let existed = inner.store.delete_endpoint(endpoint)?;
        let removed = inner.endpoints.remove(endpoint);
        self.router.remove(endpoint);
        self.collect_locked(&inner);
        drop(inner);
        drop(removed); // pools drain outside the lock
        if !existed {
            return Err(ControlError::NotFound(format!("no service named {endpoint:?}")));
        }
        tracing::info!(endpoint, "endpoint deleted");
        Ok(serde_json::json!({"deleted": endpoint}))
    }

    /// Creates, updates or replaces a version. Rules are checked and the
    /// change committed before this returns; a build it needs runs after.
    pub fn change_version(
        self: &Arc<Self>,
        endpoint: &str,
        version: &str,
        mut req: VersionRequest,
        mode: Mode,
    ) -> Result<Accepted, ControlError> {
        valid_name("endpoint", endpoint)?;
        valid_name("version", version)?;
        // Auth settings in a deployment config belong to the endpoint.
        let auth_change = match req.config.as_mut() {
            Some(c) => AuthSettings::take_from(c)?,
            None => AuthSettings::default(),
        };
        let mut inner = lock(&self.inner);
        let exists = inner
            .endpoints
            .get(endpoint)
            .is_some_and(|e| e.versions.iter().any(|v| v.row.rollout.name == version));
        let mode = match mode {
            Mode::Put if exists => Mode::Update,
            Mode::Put => Mode::Create,
            m => m,
        };
        if mode == Mode::Update && !exists {
            return Err(ControlError::NotFound(format!("service {endpoint:?} has no version {version:?}")));
        }
        let current: Vec<Rollout> = inner
            .endpoints
            .get(endpoint)
            .map(|e| e.versions.iter().map(|v| v.row.rollout.clone()).collect())
            .unwrap_or_default();
        let next = match mode {
            Mode::Create => rules::create(&current, version, &req.rollout())?,
            _ => rules::update(&current, version, &req.rollout())?,
        };
        let new_split = rules::shares(&current) != rules::shares(&next);

        // The version's new row.
        let old = inner
            .endpoints
            .get(endpoint)
            .and_then(|e| e.versions.iter().find(|v| v.row.rollout.name == version))
            .map(|v| v.row.clone());
        let spec_changed = mode == Mode::Create || req.touches_spec();
        let spec = match &old {
            Some(o) => VersionSpec {
                module: req.module.clone().unwrap_or_else(|| o.spec.module.clone()),
                module_name: match (&req.module, &req.module_name) {
                    (_, Some(n)) => n.clone(),
                    (Some(_), None) => String::new(),
                    (None, None) => o.spec.module_name.clone(),
                },
                models: req.models.clone().unwrap_or_else(|| o.spec.models.clone()),
                config: req.config.clone().unwrap_or_else(|| o.spec.config.clone()),
            },
            None => VersionSpec {
                module: req
                    .module
                    .clone()
                    .ok_or_else(|| ControlError::BadRequest(format!("creating version {version:?} needs a module")))?,
                module_name: req.module_name.clone().unwrap_or_default(),
                models: req.models.clone().unwrap_or_default(),
                config: req.config.clone().unwrap_or(serde_json::Value::Null),
            },
        };
        let spec = VersionSpec {
            models: self.resolve_models(&inner, &spec.models)?,
            ..spec
        };
        if spec_changed {
            self.validate(&spec)?;
            let size = self.blob_size(&spec.module, "module")?;
            inner.store.record_module(&spec.module, &crate::deploy::display_name(&spec), size)?;
        }
        let row_of = |r: &Rollout, base: Option<&VersionRow>| VersionRow {
            endpoint: endpoint.into(),
            rollout: r.clone(),
            spec: base.map(|b| b.spec.clone()).unwrap_or_default(),
            description: base.map(|b| b.description.clone()).unwrap_or_default(),
            tags: base.map(|b| b.tags.clone()).unwrap_or_default(),
            created_at: base.map(|b| b.created_at.clone()).unwrap_or_else(now_rfc3339),
        };
        let mut ep_row = inner
            .endpoints
            .get(endpoint)
            .map(|e| e.row.clone())
            .unwrap_or_else(|| new_endpoint_row(endpoint, "", Tags::new()));
        if !auth_change.is_empty() {
            auth_change.apply(&mut ep_row)?;
        }
        let mut rows = Vec::new();
        for r in &next {
            let base = inner
                .endpoints
                .get(endpoint)
                .and_then(|e| e.versions.iter().find(|v| v.row.rollout.name == r.name))
                .map(|v| &v.row);
            let mut row = row_of(r, base);
            if r.name == version {
                row.spec = spec.clone();
                if let Some(d) = &req.description {
                    row.description = d.clone();
                }
                if let Some(t) = &req.tags {
                    row.tags = t.clone();
                }
            }
            rows.push(row);
        }
        // Only rows that changed are written, in one transaction.
        let changed: Vec<VersionRow> = rows
            .iter()
            .filter(|r| {
                let before = inner
                    .endpoints
                    .get(endpoint)
                    .and_then(|e| e.versions.iter().find(|v| v.row.rollout.name == r.rollout.name));
                match before {
                    None => true,
                    Some(b) => b.row.rollout != r.rollout || r.rollout.name == version,
                }
            })
            .cloned()
            .collect();
        inner.store.commit_endpoint(&ep_row, &changed, &[])?;

        // Committed: now the in-memory view.
        let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        let ep = inner.endpoints.entry(endpoint.to_string()).or_insert_with(|| EndpointState {
            row: ep_row.clone(),
            versions: Vec::new(),
        });
        ep.row = ep_row;
        for row in rows {
            match ep.versions.iter_mut().find(|v| v.row.rollout.name == row.rollout.name) {
                Some(v) => v.row = row,
                None => ep.versions.push(VersionState {
                    row,
                    live: None,
                    target: 0,
                    done: 0,
                    phase: Phase::Building("queued".into()),
                    last_error: None,
                    events: VecDeque::new(),
                    ctx: None,
                }),
            }
        }
        let building = if spec_changed {
            let v = ep
                .versions
                .iter_mut()
                .find(|v| v.row.rollout.name == version)
                .expect("just written");
            v.target = generation;
            v.phase = Phase::Building("queued".into());
            v.event(format!(
                "deploy #{generation} accepted: module {}",
                crate::deploy::display_name(&spec)
            ));
            Some(generation)
        } else {
            None
        };
        if new_split {
            ep.restart_split_check();
        }
        tracing::info!(endpoint, version, generation, rebuild = spec_changed, "version change committed");
        self.publish(&inner, endpoint);
        let service = self.show_locked(&inner, endpoint).expect("endpoint exists");
        drop(inner);
        if let Some(g) = building {
            let this = self.clone();
            let (endpoint, version) = (endpoint.to_string(), version.to_string());
            std::thread::Builder::new()
                .name(format!("deploy-{endpoint}-{version}"))
                .spawn(move || this.run_build(&endpoint, &version, g, spec))
                .map_err(|e| ControlError::Store(format!("starting the build: {e}")))?;
        }
        Ok(Accepted { building, service })
    }

    /// Deletes a version, moving the default to `new_default` if given.
    pub fn delete_version(&self, endpoint: &str, version: &str, new_default: Option<&str>) -> Result<serde_json::Value, ControlError> {
        let mut inner = lock(&self.inner);
        let ep = inner
            .endpoints
            .get(endpoint)
            .ok_or_else(|| ControlError::NotFound(format!("no service named {endpoint:?}")))?;
        let current: Vec<Rollout> = ep.versions.iter().map(|v| v.row.rollout.clone()).collect();
        let next = rules::delete(&current, version, new_default)?;
        let changed: Vec<VersionRow> = ep
            .versions
            .iter()
            .filter_map(|v| {
                let n = next.iter().find(|r| r.name == v.row.rollout.name)?;
                (n != &v.row.rollout).then(|| VersionRow {
                    rollout: n.clone(),
                    ..v.row.clone()
                })
            })
            .collect();
        let ep_row = ep.row.clone();
        inner.store.commit_endpoint(&ep_row, &changed, &[version.to_string()])?;
        let ep = inner.endpoints.get_mut(endpoint).expect("checked");
        let pos = ep.versions.iter().position(|v| v.row.rollout.name == version).expect("checked");
        let removed = ep.versions.remove(pos);
        for v in ep.versions.iter_mut() {
            if let Some(n) = next.iter().find(|r| r.name == v.row.rollout.name) {
                v.row.rollout = n.clone();
            }
        }
        if rules::shares(&current) != rules::shares(&next) {
            ep.restart_split_check();
        }
        self.publish(&inner, endpoint);
        self.collect_locked(&inner);
        let shown = self.show_locked(&inner, endpoint).expect("endpoint exists");
        drop(inner);
        drop(removed); // its pool drains once in-flight requests let go
        tracing::info!(endpoint, version, "version deleted");
        Ok(shown)
    }

    /// Model refs naming a registered model (`name:version`, or a name for
    /// its latest) take that model's file name and bytes.
    fn resolve_models(&self, inner: &Inner, models: &[ModelRef]) -> Result<Vec<ModelRef>, ControlError> {
        models
            .iter()
            .map(|m| match &m.model {
                None => Ok(m.clone()),
                Some(id) => {
                    let (name, ver) = match id.split_once(':') {
                        Some((n, v)) => (
                            n,
                            Some(
                                v.parse::<i64>()
                                    .map_err(|_| ControlError::BadRequest(format!("model id {id:?} is not name:version")))?,
                            ),
                        ),
                        None => (id.as_str(), None),
                    };
                    let row = inner
                        .store
                        .model(name, ver)?
                        .ok_or_else(|| ControlError::NotFound(format!("no registered model {id:?}")))?;
                    Ok(ModelRef {
                        file: if m.file.is_empty() { row.file_name } else { m.file.clone() },
                        sha256: row.sha256,
                        model: Some(row.id),
                    })
                }
            })
            .collect()
    }

    /// Runs one build and records its outcome, unless a newer change
    /// superseded it (then its pool is dropped unused).
    fn run_build(self: Arc<Self>, endpoint: &str, version: &str, generation: u64, spec: VersionSpec) {
        let phase = |p: String| {
            let mut inner = lock(&self.inner);
            if let Some(v) = find_version(&mut inner, endpoint, version) {
                if v.target == generation {
                    v.event(p.clone());
                    v.phase = Phase::Building(p);
                }
            }
        };
        let result = self.build(endpoint, version, &spec, &phase);
        let mut inner = lock(&self.inner);
        // The counts saved for this version, if it ran before (a restart).
        let saved = match inner.store.counters(endpoint, version) {
            Ok(saved) => saved,
            Err(e) => {
                tracing::warn!(endpoint, version, error = %e, "reading the version's saved counters failed; they start from zero");
                None
            }
        };
        let Some(v) = find_version(&mut inner, endpoint, version) else {
            tracing::info!(
                endpoint,
                version,
                generation,
                "build finished after its version was deleted; dropped"
            );
            return;
        };
        if v.target != generation {
            tracing::info!(endpoint, version, generation, "build superseded by a newer change; dropped");
            return;
        }
        v.done = generation;
        let mut revert = None;
        let mut serving = None;
        let old = match result {
            Ok(built) => {
                serving = Some(built.spec.clone());
                v.event(format!(
                    "deploy #{generation} is serving ({} ms; component {})",
                    built.deploy_ms, built.component
                ));
                tracing::info!(
                    endpoint,
                    version,
                    generation,
                    component = built.component,
                    deploy_ms = built.deploy_ms,
                    "version serving"
                );
                // The same version (module, models, config) keeps its
                // counts: from the build it replaces, or saved before a
                // restart. A changed version starts from zero.
                let reported = &built.pool.prepared().context().reported;
                let kept = match &v.live {
                    Some(old) if old.spec == built.spec => {
                        let old_reported = &old.pool.prepared().context().reported;
                        Some(Counters::of(&old.version.stats, old_reported))
                    }
                    Some(_) => None,
                    None => saved.filter(|(sha, _)| *sha == spec_sha(&built.spec)).and_then(|(_, json)| {
                        serde_json::from_str::<Counters>(&json)
                            .inspect_err(|e| tracing::warn!(endpoint, version, error = %e, "the counts saved before do not read; starting from zero"))
                            .ok()
                    }),
                };
                if let Some(c) = kept {
                    c.add_to(&built.version.stats, reported);
                }
                v.ctx = Some(built.pool.prepared().context().clone());
                v.phase = Phase::Done;
                v.last_error = None;
                v.live.replace(built)
            }
            Err(f) => {
                tracing::error!(endpoint, version, generation, error = %f.message, "deploy failed");
                v.event(format!("deploy #{generation} failed: {}", f.message));
                if f.ctx.is_some() {
                    v.ctx = f.ctx;
                }
                v.last_error = Some(f.message.clone());
                match v.live.as_ref().map(|l| l.spec.clone()) {
                    // An update that fails leaves the running deployment serving,
                    // and the store goes back to the spec it runs.
                    Some(running) => {
                        v.event(format!("still serving the previous deployment of {version}"));
                        v.phase = Phase::Done;
                        v.row.spec = running;
                        revert = Some(v.row.clone());
                    }
                    None => v.phase = Phase::Failed(f.message),
                }
                None
            }
        };
        if let Some(row) = revert {
            let ep_row = inner.endpoints[endpoint].row.clone();
            if let Err(e) = inner.store.commit_endpoint(&ep_row, &[row], &[]) {
                tracing::error!(endpoint, version, error = %e, "restoring the running spec in the store failed");
            }
        }
        if let Some(spec) = serving {
            if let Err(e) = inner.store.set_serving(endpoint, version, &spec) {
                tracing::error!(endpoint, version, error = %e, "recording the spec that serves failed");
            }
        }
        self.publish(&inner, endpoint);
        self.collect_locked(&inner);
        drop(inner);
        drop(old); // the replaced pool drains outside the lock
        crate::pages::hand_back_soon();
    }

    /// Brings back every stored endpoint and version (after a restart). A
    /// version whose stored spec fails to build goes back to the spec it
    /// last served, if that is another (an update acknowledged before the
    /// restart, not yet built: what a failed update does while the process
    /// runs); one with none is reported as Failed; the others serve.
    pub fn restore(self: &Arc<Self>) -> Result<(), ControlError> {
        let mut pending = Vec::new();
        {
            let mut inner = lock(&self.inner);
            let endpoints = inner.store.endpoints()?;
            let versions = inner.store.versions()?;
            let serving = inner.store.serving()?;
            for row in endpoints {
                let name = row.name.clone();
                let mut state = EndpointState { row, versions: Vec::new() };
                for v in versions.iter().filter(|v| v.endpoint == name) {
                    let g = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
                    let mut vs = VersionState {
                        row: v.clone(),
                        live: None,
                        target: g,
                        done: 0,
                        phase: Phase::Building("restoring after a restart".into()),
                        last_error: None,
                        events: VecDeque::new(),
                        ctx: None,
                    };
                    vs.event(format!("restoring after a restart (deploy #{g})"));
                    let before = serving
                        .iter()
                        .find(|(e, n, spec)| *e == name && *n == v.rollout.name && *spec != v.spec)
                        .map(|(_, _, spec)| spec.clone());
                    pending.push((
                        !v.rollout.is_default,
                        name.clone(),
                        v.rollout.name.clone(),
                        g,
                        v.spec.clone(),
                        before,
                    ));
                    state.versions.push(vs);
                }
                inner.endpoints.insert(name.clone(), state);
                self.publish(&inner, &name);
            }
        }
        // Defaults first, so each endpoint serves as soon as it can.
        pending.sort_by_key(|p| p.0);
        for (_, e, v, g, spec, before) in pending {
            self.clone().run_build(&e, &v, g, spec);
            if let Some(before) = before {
                self.go_back_if_failed(&e, &v, g, before);
            }
        }
        // Start-up's pages too, with no version to build (the builds' and
        // this one are one hand-back).
        crate::pages::hand_back_soon();
        self.set_ready();
        self.start_monitor();
        Ok(())
    }

    /// After a restart: a version whose stored spec failed to build (the
    /// restore's build, `restored`: not a change made since), and that
    /// serves nothing, is built from `before`, the spec it served before
    /// the restart, which the store takes back.
    fn go_back_if_failed(self: &Arc<Self>, endpoint: &str, version: &str, restored: u64, before: VersionSpec) {
        let mut inner = lock(&self.inner);
        let ep_row = match inner.endpoints.get(endpoint) {
            Some(ep) => ep.row.clone(),
            None => return,
        };
        let Some(v) = find_version(&mut inner, endpoint, version) else {
            return;
        };
        if v.live.is_some() || !matches!(v.phase, Phase::Failed(_)) || v.target != restored || v.done != restored {
            return;
        }
        let g = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        v.row.spec = before.clone();
        v.target = g;
        v.phase = Phase::Building("going back to the deployment that served before the restart".into());
        v.event(format!(
            "the update stored before the restart failed; going back to the deployment that served before it, module {} (deploy #{g})",
            crate::deploy::display_name(&before)
        ));
        let row = v.row.clone();
        if let Err(e) = inner.store.commit_endpoint(&ep_row, &[row], &[]) {
            tracing::error!(endpoint, version, error = %e, "restoring the served spec in the store failed");
        }
        self.publish(&inner, endpoint);
        drop(inner);
        tracing::warn!(
            endpoint,
            version,
            "the stored update failed after a restart; building the spec that served before it"
        );
        self.clone().run_build(endpoint, version, g, before);
    }

    /// Publishes one endpoint's routing table from its versions as they are.
    pub(crate) fn publish(&self, inner: &Inner, endpoint: &str) {
        let Some(ep) = inner.endpoints.get(endpoint) else {
            self.router.remove(endpoint);
            return;
        };
        let table = routing_table(ep);
        self.router.publish(table);
    }

    fn collect_locked(&self, inner: &Inner) {
        let mut modules = Vec::new();
        let mut models = Vec::new();
        for v in inner.endpoints.values().flat_map(|e| e.versions.iter()) {
            for spec in [Some(&v.row.spec), v.live.as_ref().map(|l| &l.spec)].into_iter().flatten() {
                modules.push(spec.module.clone());
                models.extend(spec.models.iter().map(|m| m.sha256.clone()));
            }
        }
        self.collect_unused(&modules, &models);
    }
}

fn find_version<'a>(inner: &'a mut Inner, endpoint: &str, version: &str) -> Option<&'a mut VersionState> {
    inner
        .endpoints
        .get_mut(endpoint)?
        .versions
        .iter_mut()
        .find(|v| v.row.rollout.name == version)
}

fn new_endpoint_row(name: &str, description: &str, tags: Tags) -> EndpointRow {
    EndpointRow {
        name: name.into(),
        description: description.into(),
        tags,
        primary_key: new_key(),
        secondary_key: new_key(),
        created_at: now_rfc3339(),
        auth_mode: AuthMode::Key,
        token_keys: Vec::new(),
    }
}

/// The effective split (rules::effective_shares): versions that cannot
/// serve yet, or that the monitor found Unhealthy, give their share away.
pub(crate) fn effective_shares(ep: &EndpointState) -> Vec<(String, u32)> {
    let rollouts: Vec<Rollout> = ep.versions.iter().map(|v| v.row.rollout.clone()).collect();
    // Versions that are ready take their share; if none is, those that run
    // at all keep serving rather than the endpoint answering 503.
    let any_ready = ep.versions.iter().any(|v| v.takes_traffic());
    let serving = |name: &str| {
        ep.versions
            .iter()
            .any(|v| v.row.rollout.name == name && if any_ready { v.takes_traffic() } else { v.live.is_some() })
    };
    rules::effective_shares(&rollouts, serving)
}

fn routing_table(ep: &EndpointState) -> Endpoint {
    let shares = effective_shares(ep);
    let live = |name: &str| -> Option<Arc<Version>> {
        ep.versions
            .iter()
            .find(|v| v.row.rollout.name == name)
            .and_then(|v| v.live.as_ref())
            .map(|b| b.version.clone())
    };
    let split: Vec<(Arc<Version>, u32)> = shares
        .iter()
        .filter(|(_, s)| *s > 0)
        .filter_map(|(n, s)| live(n).map(|v| (v, *s)))
        .collect();
    let others: Vec<Arc<Version>> = ep
        .versions
        .iter()
        .filter(|v| !split.iter().any(|(s, _)| s.name == v.row.rollout.name))
        .filter_map(|v| v.live.as_ref().map(|b| b.version.clone()))
        .collect();
    let mirror = ep
        .versions
        .iter()
        .find(|v| v.row.rollout.mirror > 0)
        .and_then(|v| v.live.as_ref().map(|b| (b.version.clone(), v.row.rollout.mirror)));
    let not_ready = ep
        .versions
        .iter()
        .filter(|v| v.live.is_none())
        .map(|v| {
            let why = match &v.phase {
                Phase::Building(p) => format!("Transitioning ({p})"),
                Phase::Failed(e) => format!("Failed: {e}"),
                Phase::Done => "not serving".to_string(),
            };
            (v.row.rollout.name.clone(), why)
        })
        .collect();
    Endpoint::new(&ep.row.name, split, others, mirror, not_ready).with_auth(access::policy(&ep.row))
}
