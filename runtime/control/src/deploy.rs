//! Deploying a version: blobs -> compiled component -> sessions -> replicas
//! -> committed -> published.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use wasmscore_engine::{Prepared, ScoringEngine, VersionContext};
use wasmscore_replica::Pool;
use wasmscore_router::{Router, Version};
use wasmscore_tensor::{Devices, Model};

use crate::config::DeploymentConfig;
use crate::store::{Store, StoredVersion};
use crate::ControlError;

/// A model file shipped with a version.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ModelRef {
    /// The name the module loads it by ("model.onnx").
    pub file: String,
    pub sha256: String,
}

/// What the admin API gets to create or replace a version.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VersionSpec {
    /// sha256 of the component, uploaded before.
    pub module: String,
    /// The file name it came from, for messages.
    #[serde(default)]
    pub module_name: String,
    #[serde(default)]
    pub models: Vec<ModelRef>,
    #[serde(default)]
    pub config: serde_json::Value,
    /// Make this the endpoint's default version (the first one always is).
    #[serde(default)]
    pub default: bool,
}

/// Longest `init()` may take. Generous: a Python module may load several models.
const INIT_TIMEOUT: Duration = Duration::from_secs(300);

/// What the control plane knows about a deployed version beyond the router.
#[derive(Clone)]
struct Deployed {
    spec: VersionSpec,
    from_cache: bool,
    load_ms: u64,
    deploy_ms: u64,
}

/// The control plane.
pub struct Control {
    data_dir: PathBuf,
    engine: Arc<ScoringEngine>,
    devices: Devices,
    router: Arc<Router>,
    /// Admin operations are rare and must be serialized against each other;
    /// the scoring path never takes these locks.
    store: Mutex<Store>,
    deployed: Mutex<HashMap<(String, String), Deployed>>,
    /// Failures of versions that did not come back after a restart.
    failed: Mutex<HashMap<(String, String), String>>,
    /// Sessions shared by every version that ships the same model bytes.
    sessions: Mutex<HashMap<(String, String), Arc<dyn Model>>>,
    ready: AtomicBool,
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn valid_name(kind: &str, s: &str) -> Result<(), ControlError> {
    let ok = !s.is_empty()
        && s.len() <= 64
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        && !s.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(ControlError::BadRequest(format!(
            "{kind} name {s:?} must be 1-64 characters of letters, digits, '-', '_' or '.'"
        )))
    }
}

impl Control {
    pub fn open(data_dir: &Path, engine: Arc<ScoringEngine>, devices: Devices, router: Arc<Router>) -> Result<Self, ControlError> {
        std::fs::create_dir_all(data_dir.join("blobs")).map_err(|e| ControlError::Store(format!("{}: {e}", data_dir.display())))?;
        let store = Store::open(&data_dir.join("state.db"))?;
        Ok(Control {
            data_dir: data_dir.to_path_buf(),
            engine,
            devices,
            router,
            store: Mutex::new(store),
            deployed: Mutex::new(HashMap::new()),
            failed: Mutex::new(HashMap::new()),
            sessions: Mutex::new(HashMap::new()),
            ready: AtomicBool::new(false),
        })
    }

    pub fn router(&self) -> &Arc<Router> {
        &self.router
    }

    /// True once the versions in the store have been brought back.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    fn blob_path(&self, sha: &str) -> Result<PathBuf, ControlError> {
        if sha.len() != 64 || !sha.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(ControlError::BadRequest(format!("{sha:?} is not a sha256")));
        }
        Ok(self.data_dir.join("blobs").join(sha.to_ascii_lowercase()))
    }

    /// Stores bytes by content; returns their sha256.
    pub fn put_blob(&self, bytes: &[u8]) -> Result<String, ControlError> {
        let sha = sha256_hex(bytes);
        let path = self.blob_path(&sha)?;
        if !path.is_file() {
            let tmp = path.with_extension(format!("tmp{}", std::process::id()));
            let io = |e: std::io::Error| ControlError::Store(format!("writing blob {sha}: {e}"));
            std::fs::write(&tmp, bytes).map_err(io)?;
            std::fs::File::open(&tmp).and_then(|f| f.sync_all()).map_err(io)?;
            std::fs::rename(&tmp, &path).map_err(io)?;
        }
        Ok(sha)
    }

    fn read_blob(&self, sha: &str, what: &str) -> Result<Vec<u8>, ControlError> {
        std::fs::read(self.blob_path(sha)?).map_err(|e| ControlError::BadRequest(format!("{what}: blob {sha} was not uploaded ({e})")))
    }

    fn session(&self, model: &ModelRef, device: &str) -> Result<Arc<dyn Model>, ControlError> {
        let key = (model.sha256.clone(), device.to_string());
        if let Some(s) = self.sessions.lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
            return Ok(s.clone());
        }
        let bytes = self.read_blob(&model.sha256, &format!("model file {}", model.file))?;
        let dev = self.devices.get(device).map_err(|e| ControlError::BadRequest(e.to_string()))?;
        let session = dev
            .load_model(&model.file, &bytes)
            .map_err(|e| ControlError::BadRequest(format!("model file {} is not a usable ONNX model: {e}", model.file)))?;
        self.sessions.lock().unwrap_or_else(|p| p.into_inner()).insert(key, session.clone());
        Ok(session)
    }

    /// Deploys (or replaces) a version. Blocking: compiles and runs init().
    /// The version is committed to the store, then published to the router,
    /// only after its replicas are up.
    pub fn deploy(&self, endpoint: &str, version: &str, spec: VersionSpec) -> Result<serde_json::Value, ControlError> {
        valid_name("endpoint", endpoint)?;
        valid_name("version", version)?;
        let started = Instant::now();
        let resolved = DeploymentConfig::parse(&spec.config)?.resolve()?;
        let module_name = if spec.module_name.is_empty() {
            spec.module.clone()
        } else {
            spec.module_name.clone()
        };
        let module = self.read_blob(&spec.module, &format!("module {module_name}"))?;
        let (pre, load) = self
            .engine
            .load(&module)
            .map_err(|e| ControlError::BadRequest(format!("module {module_name}: {e}")))?;
        let device = "cpu";
        let mut models = HashMap::new();
        for m in &spec.models {
            valid_name("model file", &m.file)?;
            models.insert(m.file.clone(), self.session(m, device)?);
        }
        let ctx = Arc::new(VersionContext::new(
            endpoint,
            version,
            models,
            self.devices.clone(),
            device,
            resolved.memory_limit,
        ));
        let prepared = Prepared::new(pre, ctx, resolved.timeout, INIT_TIMEOUT);
        let pool =
            Pool::start(prepared, resolved.pool.clone()).map_err(|e| ControlError::DeployFailed(format!("{endpoint}/{version}: {e}")))?;

        let is_first = self
            .router
            .endpoint(endpoint)
            .is_none_or(|ep| ep.versions.iter().all(|v| v.name == version));
        let current_default = self.router.endpoint(endpoint).map(|ep| ep.default_version.clone());
        let make_default = spec.default || is_first || current_default.as_deref() == Some(version);
        let stored = StoredVersion {
            endpoint: endpoint.into(),
            version: version.into(),
            module_sha: spec.module.clone(),
            module_name: module_name.clone(),
            models: serde_json::to_string(&spec.models).expect("models serialize"),
            config: serde_json::to_string(&spec.config).expect("config serializes"),
            is_default: make_default,
        };
        self.store.lock().unwrap_or_else(|p| p.into_inner()).put_version(&stored)?;
        self.router.put_version(
            endpoint,
            Arc::new(Version {
                name: version.into(),
                pool: Arc::new(pool),
            }),
            make_default,
        );
        let deploy_ms = started.elapsed().as_millis() as u64;
        self.failed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&(endpoint.into(), version.into()));
        self.deployed.lock().unwrap_or_else(|p| p.into_inner()).insert(
            (endpoint.into(), version.into()),
            Deployed {
                spec,
                from_cache: load.from_cache,
                load_ms: load.elapsed.as_millis() as u64,
                deploy_ms,
            },
        );
        tracing::info!(endpoint, version, module = %module_name, from_cache = load.from_cache, load_ms = load.elapsed.as_millis() as u64, deploy_ms, "version deployed");
        self.show(endpoint)
    }

    pub fn delete_endpoint(&self, endpoint: &str) -> Result<serde_json::Value, ControlError> {
        let removed = self.store.lock().unwrap_or_else(|p| p.into_inner()).delete_endpoint(endpoint)?;
        let existed = self.router.remove_endpoint(endpoint);
        self.deployed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|(e, _), _| e != endpoint);
        if removed == 0 && !existed {
            return Err(ControlError::NotFound(format!("no service named {endpoint:?}")));
        }
        Ok(serde_json::json!({"deleted": endpoint}))
    }

    /// Brings back every stored version (after a restart). A version that
    /// fails is reported and left out; the others still serve.
    pub fn redeploy_all(&self) -> Result<(), ControlError> {
        let stored = self.store.lock().unwrap_or_else(|p| p.into_inner()).versions()?;
        // Non-default versions first, so each endpoint's default is published last.
        let (defaults, others): (Vec<_>, Vec<_>) = stored.into_iter().partition(|v| v.is_default);
        for v in others.into_iter().chain(defaults) {
            let spec = VersionSpec {
                module: v.module_sha.clone(),
                module_name: v.module_name.clone(),
                models: serde_json::from_str(&v.models).map_err(|e| ControlError::Store(e.to_string()))?,
                config: serde_json::from_str(&v.config).map_err(|e| ControlError::Store(e.to_string()))?,
                default: v.is_default,
            };
            if let Err(e) = self.deploy(&v.endpoint, &v.version, spec) {
                tracing::error!(endpoint = %v.endpoint, version = %v.version, error = %e, "version did not come back after restart");
                self.failed
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert((v.endpoint.clone(), v.version.clone()), e.to_string());
            }
        }
        self.ready.store(true, Ordering::Release);
        Ok(())
    }

    pub fn list(&self) -> serde_json::Value {
        let names: Vec<serde_json::Value> = self
            .router
            .endpoints()
            .iter()
            .map(|e| self.show(&e.name).unwrap_or_default())
            .collect();
        serde_json::json!({ "services": names })
    }

    pub fn show(&self, endpoint: &str) -> Result<serde_json::Value, ControlError> {
        let ep = self
            .router
            .endpoint(endpoint)
            .ok_or_else(|| ControlError::NotFound(format!("no service named {endpoint:?}")))?;
        let deployed = self.deployed.lock().unwrap_or_else(|p| p.into_inner());
        let mut versions = Vec::new();
        for v in &ep.versions {
            let d = deployed.get(&(endpoint.to_string(), v.name.clone()));
            let s = v.pool.stats();
            let cfg = v.pool.config();
            versions.push(serde_json::json!({
                "name": v.name,
                "is_default": v.name == ep.default_version,
                "state": if s.instances.load(Ordering::Relaxed) > 0 { "Healthy" } else { "Unhealthy" },
                "module": d.map(|d| d.spec.module_name.clone()),
                "module_sha256": d.map(|d| d.spec.module.clone()),
                "models": d.map(|d| d.spec.models.clone()),
                "config": d.map(|d| d.spec.config.clone()),
                "compiled_from_cache": d.map(|d| d.from_cache),
                "component_load_ms": d.map(|d| d.load_ms),
                "deploy_ms": d.map(|d| d.deploy_ms),
                "device": &*v.pool.prepared().context().default_device,
                "replicas": cfg.replicas,
                "instances": s.instances.load(Ordering::Relaxed),
                "busy": s.busy.load(Ordering::Relaxed),
                "queued": s.queued.load(Ordering::Relaxed),
                "served": s.served.load(Ordering::Relaxed),
                "replaced": s.replaced.load(Ordering::Relaxed),
                "overloaded": s.overloaded.load(Ordering::Relaxed),
                "last_error": s.last_error(),
            }));
        }
        let failed: Vec<serde_json::Value> = self
            .failed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|((e, _), _)| e == endpoint)
            .map(|((_, v), err)| serde_json::json!({"name": v, "state": "Failed", "error": err}))
            .collect();
        versions.extend(failed);
        Ok(serde_json::json!({
            "name": endpoint,
            "state": "Healthy",
            "default_version": ep.default_version,
            "scoring_uri": format!("/api/v1/service/{endpoint}/score"),
            "versions": versions,
        }))
    }

    /// Recent log lines of a version's module.
    pub fn logs(&self, endpoint: &str, version: Option<&str>) -> Result<serde_json::Value, ControlError> {
        let v = self
            .router
            .route(endpoint, version)
            .map_err(|e| ControlError::NotFound(e.to_string()))?;
        Ok(serde_json::json!({"version": v.name, "lines": v.pool.prepared().context().recent_logs()}))
    }
}
