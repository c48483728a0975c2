//! What `show`, `list` and `logs` report: per version its state
//! (Transitioning / Healthy / Unhealthy / Failed), rollout flags, configured
//! and effective traffic, what it runs and its replicas' counters; per
//! endpoint a state rolled up from its versions.

use std::sync::atomic::Ordering;

use serde_json::{json, Value};

use crate::deploy::{lock, Control};
use crate::rollout::{effective_shares, EndpointState, Inner, Phase, VersionState};
use crate::ControlError;

fn version_json(v: &VersionState, effective: u32) -> Value {
    let r = &v.row.rollout;
    let live = v.live.as_ref();
    let pool = live.map(|l| &l.version.pool);
    let stat = |f: &dyn Fn(&wasmscore_replica::PoolStats) -> u64| pool.map(|p| f(p.stats()));
    json!({
        "name": r.name,
        "state": v.state(),
        "phase": match &v.phase { Phase::Building(p) => Some(p.clone()), _ => None },
        "error": match &v.phase { Phase::Failed(e) => Some(e.clone()), _ => None },
        "last_deploy_error": v.last_error,
        "generation": v.target,
        "done_generation": v.done,
        "traffic": r.traffic,
        "effective_traffic": effective,
        "is_default": r.is_default,
        "is_control": r.is_control,
        "mirror": r.mirror,
        "description": v.row.description,
        "tags": v.row.tags,
        "created_at": v.row.created_at,
        "module": v.row.spec.module_name,
        "module_sha256": v.row.spec.module,
        "models": v.row.spec.models,
        "config": v.row.spec.config,
        "serving_module_sha256": live.map(|l| l.spec.module.clone()),
        "device": pool.map(|p| p.prepared().context().default_device.to_string()),
        "component": live.map(|l| l.component),
        "compiled_from_cache": live.map(|l| l.component != "compiled"),
        "component_load_ms": live.map(|l| l.load_ms),
        "deploy_ms": live.map(|l| l.deploy_ms),
        "replicas": pool.map(|p| p.config().replicas),
        "instances": stat(&|s| s.instances.load(Ordering::Relaxed) as u64),
        "busy": stat(&|s| s.busy.load(Ordering::Relaxed) as u64),
        "queued": stat(&|s| s.queued.load(Ordering::Relaxed) as u64),
        "served": stat(&|s| s.served.load(Ordering::Relaxed)),
        "replaced": stat(&|s| s.replaced.load(Ordering::Relaxed)),
        "overloaded": stat(&|s| s.overloaded.load(Ordering::Relaxed)),
        "last_error": pool.and_then(|p| p.stats().last_error()),
    })
}

fn endpoint_state(ep: &EndpointState) -> &'static str {
    let states: Vec<&str> = ep.versions.iter().map(|v| v.state()).collect();
    let default_serves = ep.versions.iter().any(|v| v.row.rollout.is_default && v.live.is_some());
    if states.contains(&"Transitioning") {
        "Transitioning"
    } else if !states.is_empty() && states.iter().all(|s| *s == "Failed") {
        "Failed"
    } else if states.is_empty() || !default_serves || states.iter().any(|s| *s != "Healthy") {
        "Unhealthy"
    } else {
        "Healthy"
    }
}

impl Control {
    pub(crate) fn show_locked(&self, inner: &Inner, endpoint: &str) -> Result<Value, ControlError> {
        let ep = inner
            .endpoints
            .get(endpoint)
            .ok_or_else(|| ControlError::NotFound(format!("no service named {endpoint:?}")))?;
        let shares = effective_shares(ep);
        let share = |n: &str| shares.iter().find(|(s, _)| s == n).map(|(_, w)| *w).unwrap_or(0);
        let versions: Vec<Value> = ep.versions.iter().map(|v| version_json(v, share(&v.row.rollout.name))).collect();
        let flag =
            |f: fn(&crate::rules::Rollout) -> bool| ep.versions.iter().find(|v| f(&v.row.rollout)).map(|v| v.row.rollout.name.clone());
        let mirror = ep
            .versions
            .iter()
            .find(|v| v.row.rollout.mirror > 0)
            .map(|v| json!({"version": v.row.rollout.name, "percent": v.row.rollout.mirror}));
        Ok(json!({
            "name": ep.row.name,
            "state": endpoint_state(ep),
            "description": ep.row.description,
            "tags": ep.row.tags,
            "created_at": ep.row.created_at,
            "scoring_uri": format!("/api/v1/service/{endpoint}/score"),
            "default_version": flag(|r| r.is_default),
            "control_version": flag(|r| r.is_control),
            "mirror": mirror,
            "traffic": shares.iter().map(|(n, s)| (n.clone(), json!(s))).collect::<serde_json::Map<_, _>>(),
            "versions": versions,
        }))
    }

    pub fn show(&self, endpoint: &str) -> Result<Value, ControlError> {
        self.show_locked(&lock(&self.inner), endpoint)
    }

    pub fn list(&self) -> Value {
        let inner = lock(&self.inner);
        let all: Vec<Value> = inner.endpoints.keys().filter_map(|n| self.show_locked(&inner, n).ok()).collect();
        json!({ "services": all })
    }

    pub fn version(&self, endpoint: &str, version: &str) -> Result<Value, ControlError> {
        let shown = self.show(endpoint)?;
        shown["versions"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|v| v["name"] == version)
            .cloned()
            .ok_or_else(|| ControlError::NotFound(format!("service {endpoint:?} has no version {version:?}")))
    }

    /// A version's deploy events and its module's recent log lines (the
    /// default version's when none is named).
    pub fn logs(&self, endpoint: &str, version: Option<&str>) -> Result<Value, ControlError> {
        let inner = lock(&self.inner);
        let ep = inner
            .endpoints
            .get(endpoint)
            .ok_or_else(|| ControlError::NotFound(format!("no service named {endpoint:?}")))?;
        let v = match version {
            Some(name) => ep.versions.iter().find(|v| v.row.rollout.name == name),
            None => ep.versions.iter().find(|v| v.row.rollout.is_default),
        }
        .ok_or_else(|| ControlError::NotFound(format!("service {endpoint:?} has no version {}", version.unwrap_or("(default)"))))?;
        let events: Vec<Value> = v.events.iter().map(|(ms, m)| json!({"unix_ms": ms, "message": m})).collect();
        let lines = v.ctx.as_ref().map(|c| c.recent_logs()).unwrap_or_default();
        Ok(json!({"version": v.row.rollout.name, "state": v.state(), "events": events, "lines": lines}))
    }
}
