//! What `show`, `list` and `logs` report: per version its state
//! (Transitioning / Healthy / Unhealthy / Failed), rollout flags, configured
//! and effective traffic, what it runs and its replicas' counters; per
//! endpoint a state rolled up from its versions.

use std::sync::atomic::Ordering;

use serde_json::{json, Value};

use crate::deploy::{lock, Control};
use crate::rollout::{effective_shares, EndpointState, Inner, Phase, VersionState};
use crate::ControlError;
use wasmscore_replica::histogram::label;

/// A version's config as shown: granted environment variables keep their
/// names, not their values (they may be secrets).
fn redacted(config: &Value) -> Value {
    let mut c = config.clone();
    if let Some(env) = c.get_mut("environment_variables").and_then(Value::as_object_mut) {
        for v in env.values_mut() {
            *v = Value::from("<hidden>");
        }
    }
    c
}

fn version_json(v: &VersionState, effective: u32) -> Value {
    let r = &v.row.rollout;
    let live = v.live.as_ref();
    let pool = live.map(|l| &l.pool);
    let stat = |f: &dyn Fn(&wasmscore_replica::PoolStats) -> u64| pool.map(|p| f(p.stats()));
    let (autoscale, health) = match live {
        Some(l) => l.monitor.json(),
        None => (Value::Null, Value::Null),
    };
    let health = match (health, pool) {
        (Value::Object(mut h), Some(p)) => {
            let st = p.stats();
            let alive = st.instances.load(Ordering::Relaxed) + st.starting.load(Ordering::Relaxed);
            h.insert("live".into(), json!(alive > 0 || st.target.load(Ordering::Relaxed) == 0));
            h.insert(
                "consecutive_failures".into(),
                json!(st.consecutive_failures.load(Ordering::Relaxed)),
            );
            Value::Object(h)
        }
        (h, _) => h,
    };
    let resources = live.map(|l| {
        let s = &l.monitor.settings;
        // The limit as the kernel applies it: the quota for the replicas
        // running now, and how often their threads waited for it.
        let limit = pool
            .and_then(|p| p.config().cpu.as_ref())
            .map(|g| json!({"cores_now": g.cores(), "throttling": g.throttling()}));
        json!({"cpu_cores": s.cpu_cores, "cpu_cores_limit": s.cpu_limit, "cpu_limit": limit, "memory_gb": s.memory_gb})
    });
    let sandbox = live.map(|l| {
        let s = &l.monitor.settings;
        json!({
            "files": "none",
            "sockets": "none",
            "arguments": "none",
            "stdio": "stdin empty; stdout and stderr discarded (module logs: the log import)",
            "environment": s.sandbox.env.iter().map(|(k, _)| k).collect::<Vec<_>>(),
            "clocks": if s.sandbox.precise_clocks { "precise".to_string() } else { format!("coarse ({} ms steps)", wasmscore_engine::COARSE_CLOCK_NS / 1_000_000) },
            "memory_limit_bytes": s.memory_limit,
            "scoring_timeout_ms": s.timeout.as_millis() as u64,
        })
    });
    let mut out = json!({
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
        "config": redacted(&v.row.spec.config),
        "serving_module_sha256": live.map(|l| l.spec.module.clone()),
        "device": pool.map(|p| p.prepared().context().default_device.to_string()),
        "devices": live.map(|l| {
            let ctx = l.pool.prepared().context();
            json!({
                "asked": l.placement.asked,
                "ops": l.placement.device,
                "models": l.placement.model_device,
                "fallback": l.monitor.settings.fallback,
                "fallbacks_at_deploy": l.placement.notes,
                "usage": ctx.usage.snapshot(&l.placement.device),
            })
        }),
        "data_collection": pool.map(|p| p.prepared().context()).and_then(|ctx| ctx.collector.as_ref().map(|c| {
            let queued: serde_json::Map<String, serde_json::Value> = wasmscore_collect::Designation::ALL
                .iter()
                .map(|d| (d.as_str().to_string(), json!(c.stats.queued[*d as usize].load(Ordering::Relaxed))))
                .collect();
            json!({
                "sample_rate": c.rate(),
                "records": queued,
                "dropped": c.stats.dropped.load(Ordering::Relaxed),
                "path": format!("collected/{}/{}", ctx.endpoint, r.name),
            })
        })),
        "batching": live.filter(|l| !l.batching.is_empty()).map(|l| {
            let models: serde_json::Map<String, serde_json::Value> = l
                .batching
                .iter()
                .map(|(file, state)| {
                    let v = match state {
                        Ok(b) => json!({
                            "batched": true,
                            "batches": b.batches.load(Ordering::Relaxed),
                            "calls": b.calls.load(Ordering::Relaxed),
                            "mean_batch_size": (b.mean_batch_size() * 100.0).round() / 100.0,
                            "mean_wait_us": (b.mean_wait_us() * 10.0).round() / 10.0,
                            "fallbacks": b.fallbacks.load(Ordering::Relaxed),
                            "alone": b.alone.load(Ordering::Relaxed),
                            "expired": b.expired.load(Ordering::Relaxed),
                        }),
                        Err(why) => json!({"batched": false, "reason": why}),
                    };
                    (file.clone(), v)
                })
                .collect();
            json!({
                "max_batch_size": l.monitor.settings.batching.map(|b| b.max_batch_size),
                "max_queue_delay_us": l.monitor.settings.batching.map(|b| b.max_queue_delay_us),
                "models": models,
            })
        }),
        "component": live.map(|l| l.component),
        "compiled_from_cache": live.map(|l| l.component != "compiled"),
        "component_load_ms": live.map(|l| l.load_ms),
        "deploy_ms": live.map(|l| l.deploy_ms),
    });
    let replicas = json!({
        "replicas": pool.map(|p| p.replicas()),
        "target_replicas": pool.map(|p| p.target_replicas()),
        "desired_replicas": live.map(|l| l.monitor.scaler.as_ref().map(|s| s.desired).unwrap_or(l.monitor.settings.pool.replicas)),
        "max_concurrent": pool.map(|p| p.config().max_concurrent),
        "instances": stat(&|s| s.instances.load(Ordering::Relaxed) as u64),
        "starting": stat(&|s| s.starting.load(Ordering::Relaxed) as u64),
        "busy": stat(&|s| s.busy.load(Ordering::Relaxed) as u64),
        "queued": stat(&|s| s.queued.load(Ordering::Relaxed) as u64),
        "served": stat(&|s| s.served.load(Ordering::Relaxed)),
        "replaced": stat(&|s| s.replaced.load(Ordering::Relaxed)),
        "overloaded": stat(&|s| s.overloaded.load(Ordering::Relaxed)),
        "failures": stat(&|s| s.failures.load(Ordering::Relaxed)),
        "init_failures": stat(&|s| s.init_failures.load(Ordering::Relaxed)),
        "replicas_started": stat(&|s| s.started.load(Ordering::Relaxed)),
        "replicas_retired": stat(&|s| s.retired.load(Ordering::Relaxed)),
        "wakes_from_zero": stat(&|s| s.wakes.load(Ordering::Relaxed)),
        "abandoned_calls": stat(&|s| s.stuck.load(Ordering::Relaxed)),
        "blocked_calls": stat(&|s| s.blocked.load(Ordering::Relaxed) as u64),
        "utilization": live.and_then(|l| l.monitor.scaler.as_ref()).and_then(|s| s.utilization).map(|u| (u * 1000.0).round() / 1000.0),
        "autoscale": autoscale,
        "health": health,
        "resources": resources,
        "sandbox": sandbox,
        "last_error": pool.and_then(|p| p.stats().last_error()),
    });
    if let (Value::Object(o), Value::Object(r)) = (&mut out, replicas) {
        o.extend(r);
    }
    out
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
            "auth": crate::access::auth_json(&ep.row),
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

    /// Deploy events and the module's recent log lines of one version, or
    /// of every version (VERSION None), each entry naming its version.
    pub fn logs(&self, endpoint: &str, version: Option<&str>) -> Result<Value, ControlError> {
        let inner = lock(&self.inner);
        let ep = inner
            .endpoints
            .get(endpoint)
            .ok_or_else(|| ControlError::NotFound(format!("no service named {endpoint:?}")))?;
        let chosen: Vec<_> = ep
            .versions
            .iter()
            .filter(|v| version.is_none_or(|n| v.row.rollout.name == n))
            .collect();
        if let (Some(n), true) = (version, chosen.is_empty()) {
            return Err(ControlError::NotFound(format!("service {endpoint:?} has no version {n:?}")));
        }
        // Taken under the lock: the events and a handle on each module's
        // lines. The lines (up to 1000 per version, each up to 16 KiB)
        // are read and made JSON after it, so a large answer does not hold
        // up deploys and scaling.
        let taken: Vec<_> = chosen
            .iter()
            .map(|v| (v.row.rollout.name.clone(), v.state(), v.events.clone(), v.ctx.clone()))
            .collect();
        drop(inner);
        let versions: Vec<Value> = taken
            .into_iter()
            .map(|(name, state, events, ctx)| {
                let events: Vec<Value> = events.iter().map(|(ms, m)| json!({"unix_ms": ms, "message": m})).collect();
                let lines = ctx.as_ref().map(|c| c.recent_logs()).unwrap_or_default();
                json!({"version": name, "state": state, "events": events, "lines": lines})
            })
            .collect();
        Ok(json!({"endpoint": endpoint, "versions": versions}))
    }
}

impl Control {
    /// The verdict (wasmscore-rules' verdict.rs): each treatment against
    /// the endpoint's control, from the counts the request path keeps since
    /// each version was built.
    pub fn compare(&self, endpoint: &str, alpha: f64) -> Result<Value, ControlError> {
        let inner = lock(&self.inner);
        let ep = inner
            .endpoints
            .get(endpoint)
            .ok_or_else(|| ControlError::NotFound(format!("no service named {endpoint:?}")))?;
        let rollouts: Vec<_> = ep.versions.iter().map(|v| v.row.rollout.clone()).collect();
        let shares = wasmscore_rules::rollout::shares(&rollouts);
        let arm = |v: &VersionState| -> Option<wasmscore_rules::verdict::Arm> {
            let b = v.live.as_ref()?;
            let st = &b.version.stats;
            let answers = |i: usize| st.responses[i].load(Ordering::Relaxed);
            Some(wasmscore_rules::verdict::Arm {
                name: v.row.rollout.name.clone(),
                share: shares.iter().find(|(n, _)| *n == v.row.rollout.name).map_or(0, |(_, s)| *s),
                requests: (0..5).map(answers).sum(),
                split: st.split.load(Ordering::Relaxed),
                errors: answers(4),
                latency: st.duration.counts(),
                // The serving build's (a failed update's build has none).
                reported: b.pool.prepared().context().reported.snapshot(),
            })
        };
        let control = ep.versions.iter().find(|v| v.row.rollout.is_control).ok_or_else(|| {
            ControlError::Conflict(format!(
                "service {endpoint:?} has no control version to compare with: mark one with `version update --control`"
            ))
        })?;
        let control = arm(control).ok_or_else(|| ControlError::Conflict("the control version is not serving".into()))?;
        let treatments: Vec<_> = ep
            .versions
            .iter()
            .filter(|v| !v.row.rollout.is_control && v.row.rollout.mirror == 0)
            .filter_map(arm)
            .collect();
        let verdict = wasmscore_rules::verdict::compare(&control, &treatments, &wasmscore_replica::histogram::BUCKETS, alpha);
        Ok(json!({"endpoint": endpoint, "verdict": verdict}))
    }
}

impl Control {
    /// Every stored version, serving or not, by endpoint (Triton's
    /// repository index): (endpoint, version, why it does not serve).
    pub fn versions(&self) -> Vec<(String, String, Option<String>)> {
        let inner = lock(&self.inner);
        let mut out = Vec::new();
        for (name, ep) in &inner.endpoints {
            for v in &ep.versions {
                let why = (!v.takes_traffic()).then(|| {
                    let reason = v.live.as_ref().and_then(|b| b.monitor.reason.clone());
                    match reason {
                        Some(r) => format!("{}: {r}", v.state()),
                        None => v.state().to_string(),
                    }
                });
                out.push((name.clone(), v.row.rollout.name.clone(), why));
            }
        }
        out
    }

    /// Readiness of an endpoint (any version takes traffic) or of one version
    /// (Open Inference Protocol's model ready), with the state behind it.
    pub fn ready(&self, endpoint: &str, version: Option<&str>) -> Result<(bool, Value), ControlError> {
        let inner = lock(&self.inner);
        let ep = inner
            .endpoints
            .get(endpoint)
            .ok_or_else(|| ControlError::NotFound(format!("no model (service) named {endpoint:?}")))?;
        match version {
            None => {
                let ready = ep.versions.iter().any(|v| v.takes_traffic());
                Ok((ready, json!({"name": endpoint, "ready": ready, "state": endpoint_state(ep)})))
            }
            Some(name) => {
                let v = ep
                    .versions
                    .iter()
                    .find(|v| v.row.rollout.name == name)
                    .ok_or_else(|| ControlError::NotFound(format!("service {endpoint:?} has no version {name:?}")))?;
                let ready = v.takes_traffic();
                let reason = v.live.as_ref().and_then(|b| b.monitor.reason.clone()).filter(|_| !ready);
                Ok((
                    ready,
                    json!({"name": endpoint, "version": name, "ready": ready, "state": v.state(), "reason": reason}),
                ))
            }
        }
    }

    /// Open Inference Protocol model metadata: the endpoint is the model,
    /// its versions are the model's versions; the inputs and outputs are
    /// those of the pinned version's model, or of the default version's.
    pub fn metadata(&self, endpoint: &str, version: Option<&str>) -> Result<Value, ControlError> {
        let inner = lock(&self.inner);
        let ep = inner
            .endpoints
            .get(endpoint)
            .ok_or_else(|| ControlError::NotFound(format!("no model (service) named {endpoint:?}")))?;
        let chosen = match version {
            Some(name) => Some(
                ep.versions
                    .iter()
                    .find(|v| v.row.rollout.name == name)
                    .ok_or_else(|| ControlError::NotFound(format!("service {endpoint:?} has no version {name:?}")))?,
            ),
            None => ep.versions.iter().find(|v| v.row.rollout.is_default),
        };
        let info =
            |t: &wasmscore_tensor::TensorInfo| json!({"name": t.name, "datatype": wasmscore_oip::datatype(t.dtype), "shape": t.shape});
        let signature = chosen.and_then(|v| v.live.as_ref()).and_then(|b| b.signature.as_ref());
        let (inputs, outputs): (Vec<Value>, Vec<Value>) = match signature {
            Some((i, o)) => (i.iter().map(info).collect(), o.iter().map(info).collect()),
            None => (Vec::new(), Vec::new()),
        };
        let mut versions: Vec<&str> = ep.versions.iter().map(|v| v.row.rollout.name.as_str()).collect();
        if let Some(v) = version {
            versions.retain(|n| *n == v);
        }
        Ok(json!({
            "name": endpoint,
            "versions": versions,
            "platform": "wasmscore",
            "inputs": inputs,
            "outputs": outputs,
        }))
    }

    /// Per-version figures in Prometheus' text format.
    pub fn metrics(&self) -> String {
        use std::fmt::Write;
        let inner = lock(&self.inner);
        let mut rows: Vec<(String, Vec<(String, f64)>)> = Vec::new();
        let mut device_rows: Vec<(String, [(&str, f64); 10])> = Vec::new();
        let mut device_rows_deploy: Vec<(String, f64)> = Vec::new();
        let mut collect_rows: Vec<(String, u64)> = Vec::new();
        let mut collect_dropped: Vec<(String, u64)> = Vec::new();
        let mut batch_rows: Vec<(String, std::sync::Arc<wasmscore_tensor::batch::BatchStats>)> = Vec::new();
        // Versions with a cpu_cores_limit: the quota now and the kernel's counts.
        let mut cpu_rows: Vec<(String, f64, wasmscore_replica::cpu::Throttling)> = Vec::new();
        // Histograms and answers by status class, labelled with the role.
        let mut timed: Vec<(
            String,
            std::sync::Arc<wasmscore_router::Version>,
            std::sync::Arc<wasmscore_replica::Pool>,
        )> = Vec::new();
        for (name, ep) in &inner.endpoints {
            for v in &ep.versions {
                let Some(b) = &v.live else { continue };
                let p = &b.pool;
                let st = p.stats();
                let m = &b.monitor;
                let labels = format!("endpoint=\"{}\",version=\"{}\"", label(name), label(&v.row.rollout.name));
                timed.push((format!("{labels},role=\"{}\"", v.row.rollout.role()), b.version.clone(), p.clone()));
                let ld = |a: &std::sync::atomic::AtomicUsize| a.load(Ordering::Relaxed) as f64;
                let lu = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed) as f64;
                let figures = vec![
                    ("replicas".to_string(), p.replicas() as f64),
                    ("replicas_target".into(), p.target_replicas() as f64),
                    (
                        "replicas_desired".into(),
                        m.scaler.as_ref().map(|s| s.desired).unwrap_or(m.settings.pool.replicas) as f64,
                    ),
                    ("busy".into(), ld(&st.busy)),
                    ("queued".into(), ld(&st.queued)),
                    ("utilization".into(), m.scaler.as_ref().and_then(|s| s.utilization).unwrap_or(0.0)),
                    ("ready".into(), if v.takes_traffic() { 1.0 } else { 0.0 }),
                    ("requests_total".into(), lu(&st.served)),
                    ("overloaded_total".into(), lu(&st.overloaded)),
                    ("replica_failures_total".into(), lu(&st.failures)),
                    ("replicas_replaced_total".into(), lu(&st.replaced)),
                    ("scale_events_total".into(), m.scale_events as f64),
                    ("capacity_limited_total".into(), m.capacity_limited as f64),
                    ("unhealthy_events_total".into(), m.unhealthy_events as f64),
                    ("wakes_from_zero_total".into(), lu(&st.wakes)),
                ];
                rows.push((labels.clone(), figures));
                let ctx = p.prepared().context();
                for u in ctx.usage.snapshot(&b.placement.device) {
                    let dl = format!("{labels},device=\"{}\"", label(&u.device));
                    device_rows.push((
                        dl,
                        [
                            ("op_calls_total", u.op_calls as f64),
                            ("op_errors_total", u.op_errors as f64),
                            ("op_wall_seconds_total", u.op_wall_seconds),
                            ("seconds_total", u.device_seconds),
                            ("cycles_total", u.device_cycles as f64),
                            ("fell_back_total", u.fell_back as f64),
                            ("inference_calls_total", u.inference_calls as f64),
                            ("inference_wall_seconds_total", u.inference_wall_seconds),
                            ("kept_on_device_total", u.kept_on_device as f64),
                            ("host_reads_total", u.host_reads as f64),
                        ],
                    ));
                }
                if let Some(c) = &ctx.collector {
                    for d in wasmscore_collect::Designation::ALL {
                        collect_rows.push((
                            format!("{labels},designation=\"{}\"", d.as_str()),
                            c.stats.queued[d as usize].load(Ordering::Relaxed),
                        ));
                    }
                    collect_dropped.push((labels.clone(), c.stats.dropped.load(Ordering::Relaxed)));
                }
                for (file, state) in &b.batching {
                    if let Ok(bs) = state {
                        batch_rows.push((format!("{labels},model=\"{}\"", label(file)), bs.clone()));
                    }
                }
                if let Some(g) = &p.config().cpu {
                    cpu_rows.push((labels.clone(), g.cores(), g.throttling().unwrap_or_default()));
                }
                let at_deploy = if b.placement.notes.is_empty() { 0.0 } else { 1.0 };
                device_rows_deploy.push((labels, at_deploy));
            }
        }
        drop(inner);
        let mut out = String::new();
        let versions: Vec<(String, &wasmscore_router::VersionStats)> = timed.iter().map(|(l, v, _)| (l.clone(), &*v.stats)).collect();
        wasmscore_router::render_version_stats(&mut out, &versions);
        let pools = |f: fn(&wasmscore_replica::PoolStats) -> &wasmscore_replica::histogram::Histogram| -> Vec<(String, &wasmscore_replica::histogram::Histogram)> {
            timed.iter().map(|(l, _, p)| (l.clone(), f(p.stats()))).collect()
        };
        wasmscore_replica::histogram::render(
            &mut out,
            "wasmscore_queue_wait_seconds",
            "Time a request waited for a free instance of the version.",
            &pools(|s| &s.queue_wait),
        );
        wasmscore_replica::histogram::render(
            &mut out,
            "wasmscore_run_seconds",
            "Time the module's run() took, host calls included.",
            &pools(|s| &s.run_time),
        );
        let names: Vec<String> = rows
            .first()
            .map(|(_, f)| f.iter().map(|(n, _)| n.clone()).collect())
            .unwrap_or_default();
        for (i, n) in names.iter().enumerate() {
            let kind = if n.ends_with("_total") { "counter" } else { "gauge" };
            let _ = writeln!(out, "# TYPE wasmscore_version_{n} {kind}");
            for (labels, f) in &rows {
                let _ = writeln!(out, "wasmscore_version_{n}{{{labels}}} {}", f[i].1);
            }
        }
        if let Some((_, first)) = device_rows.first() {
            for (i, (n, _)) in first.iter().enumerate() {
                let _ = writeln!(out, "# TYPE wasmscore_device_{n} counter");
                for (labels, f) in &device_rows {
                    let _ = writeln!(out, "wasmscore_device_{n}{{{labels}}} {}", f[i].1);
                }
            }
        }
        if !device_rows_deploy.is_empty() {
            let _ = writeln!(out, "# TYPE wasmscore_version_device_fallback_at_deploy gauge");
            for (labels, v) in &device_rows_deploy {
                let _ = writeln!(out, "wasmscore_version_device_fallback_at_deploy{{{labels}}} {v}");
            }
        }
        if !cpu_rows.is_empty() {
            type Figure = fn(f64, &wasmscore_replica::cpu::Throttling) -> f64;
            let figures: [(&str, &str, &str, Figure); 3] = [
                (
                    "cpu_limit_cores",
                    "gauge",
                    "The version's CPU quota now: cpu_cores_limit times its replicas.",
                    |c, _| c,
                ),
                (
                    "cpu_throttled_periods_total",
                    "counter",
                    "CFS periods in which the version's threads used up their quota and waited.",
                    |_, t| t.throttled_periods as f64,
                ),
                (
                    "cpu_throttled_seconds_total",
                    "counter",
                    "Time the version's threads waited for their quota.",
                    |_, t| t.throttled_ms as f64 / 1000.0,
                ),
            ];
            for (n, kind, help, f) in figures {
                let _ = writeln!(out, "# HELP wasmscore_version_{n} {help}\n# TYPE wasmscore_version_{n} {kind}");
                for (labels, cores, t) in &cpu_rows {
                    let _ = writeln!(out, "wasmscore_version_{n}{{{labels}}} {}", f(*cores, t));
                }
            }
        }
        if !collect_rows.is_empty() {
            let _ = writeln!(
                out,
                "# HELP wasmscore_collected_records_total Records queued for the version's collected data, by designation.\n# TYPE wasmscore_collected_records_total counter"
            );
            for (labels, n) in &collect_rows {
                let _ = writeln!(out, "wasmscore_collected_records_total{{{labels}}} {n}");
            }
            let _ = writeln!(
                out,
                "# HELP wasmscore_collected_dropped_total Records dropped because the writer's queue was full.\n# TYPE wasmscore_collected_dropped_total counter"
            );
            for (labels, n) in &collect_dropped {
                let _ = writeln!(out, "wasmscore_collected_dropped_total{{{labels}}} {n}");
            }
        }
        if !batch_rows.is_empty() {
            type Figure = fn(&wasmscore_tensor::batch::BatchStats) -> f64;
            let figures: [(&str, &str, Figure); 6] = [
                ("batches_total", "Model runs for batched calls (a batch of one counts).", |b| {
                    b.batches.load(Ordering::Relaxed) as f64
                }),
                (
                    "batched_calls_total",
                    "Calls answered from batched runs (batched_calls_total / batches_total is the mean batch size).",
                    |b| b.calls.load(Ordering::Relaxed) as f64,
                ),
                (
                    "batch_wait_seconds_total",
                    "Time calls waited for their batch to start, summed.",
                    |b| b.waited_ns.load(Ordering::Relaxed) as f64 / 1e9,
                ),
                (
                    "batch_fallbacks_total",
                    "Merged runs that failed or did not split, re-run call by call.",
                    |b| b.fallbacks.load(Ordering::Relaxed) as f64,
                ),
                ("batch_alone_total", "Calls that could not merge and ran alone.", |b| {
                    b.alone.load(Ordering::Relaxed) as f64
                }),
                (
                    "batch_expired_total",
                    "Calls whose scoring deadline passed while they waited for a batch (not run).",
                    |b| b.expired.load(Ordering::Relaxed) as f64,
                ),
            ];
            for (name, help, f) in figures {
                let _ = writeln!(out, "# HELP wasmscore_{name} {help}\n# TYPE wasmscore_{name} counter");
                for (labels, b) in &batch_rows {
                    let _ = writeln!(out, "wasmscore_{name}{{{labels}}} {}", f(b));
                }
            }
        }
        let _ = writeln!(
            out,
            "# HELP wasmscore_spin_seconds_total Time spent spinning: idle instances for the next request (only while a core was idle), callers for the reply (only while requests came one at a time).\n# TYPE wasmscore_spin_seconds_total counter\nwasmscore_spin_seconds_total {}",
            wasmscore_replica::spun_seconds()
        );
        let w = &self.collector.stats;
        let _ = writeln!(
            out,
            "# TYPE wasmscore_collected_files_total counter\nwasmscore_collected_files_total {}\n# TYPE wasmscore_collected_write_errors_total counter\nwasmscore_collected_write_errors_total {}",
            w.files.load(Ordering::Relaxed),
            w.write_errors.load(Ordering::Relaxed)
        );
        let c = self.capacity_json();
        for (k, v) in [
            ("capacity_cpu_cores", &c["cpu_cores"]),
            ("capacity_memory_gb", &c["memory_gb"]),
            ("capacity_cpu_cores_requested", &c["cpu_cores_requested"]),
            ("capacity_memory_gb_requested", &c["memory_gb_requested"]),
        ] {
            let _ = writeln!(out, "# TYPE wasmscore_{k} gauge\nwasmscore_{k} {}", v.as_f64().unwrap_or(0.0));
        }
        out
    }
}
