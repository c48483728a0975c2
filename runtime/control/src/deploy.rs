//! Building a version: blobs -> compiled component -> sessions -> replicas
//! that ran init(). Runs off the admin request (a version is acknowledged
//! once committed; its build follows), shares compiled components and
//! sessions between versions that ship the same bytes, and reports its
//! progress as phases that `show` and `--wait` print.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use wasmscore_collect::Collector;
pub use wasmscore_collect::Settings as CollectSettings;
use wasmscore_engine::{Compiled, ModelSource, Prepared, ScoringEngine, VersionContext};
use wasmscore_replica::cpu::CpuGroup;
use wasmscore_replica::{Pool, PoolConfig};
use wasmscore_router::{Router, Version};
use wasmscore_tensor::batch::{BatchSettings, BatchStats, Batched};
use wasmscore_tensor::{Devices, Model, TensorInfo};

use crate::config::{DeploymentConfig, Resolved};
use crate::monitor::{Capacity, VersionMonitor};
use crate::rollout::Inner;
use crate::store::Store;
use crate::ControlError;

/// A model file shipped with a version.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct ModelRef {
    /// The name the module loads it by ("model.onnx").
    #[serde(default)]
    pub file: String,
    #[serde(default)]
    pub sha256: String,
    /// The registered model (`name:version`) it came from, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
}

/// What a version runs: its module, its models and its deployment config.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
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
}

/// A version holds at most this many models (Azure ML's limit).
pub const MAX_MODELS: usize = 1000;

/// Longest `init()` may take. Generous: a Python module may load several models.
const INIT_TIMEOUT: Duration = Duration::from_secs(300);

/// A built version, serving or ready to.
pub(crate) struct Built {
    pub version: Arc<Version>,
    /// The version's replicas (the router reaches them as `version`).
    pub pool: Arc<Pool>,
    pub spec: VersionSpec,
    /// "compiled", "disk cache" or "shared" (another version's, in memory).
    pub component: &'static str,
    pub load_ms: u64,
    pub deploy_ms: u64,
    /// Its autoscaler and health (monitor.rs).
    pub monitor: VersionMonitor,
    /// Where it runs.
    pub placement: Placement,
    /// Its last hour, for the /ui page (series.rs).
    pub series: crate::series::Series,
    /// Per model file, when the version asked for batching: its counters,
    /// or why the probe refused it.
    pub batching: Vec<(String, Result<Arc<BatchStats>, String>)>,
    /// The inputs and outputs Open Inference Protocol metadata reports:
    /// those of its model.onnx, or of its only model.
    pub signature: Option<(Vec<TensorInfo>, Vec<TensorInfo>)>,
}

/// A build that failed, with the module's context if it got that far (its
/// log holds what init() said).
pub(crate) struct BuildFailure {
    pub message: String,
    pub ctx: Option<Arc<VersionContext>>,
}

/// Where a version runs, as `show` tells it.
#[derive(Debug, Clone)]
pub(crate) struct Placement {
    /// What its config asked for.
    pub asked: String,
    /// Where its ops go by default.
    pub device: String,
    /// Where its models' sessions are.
    pub model_device: String,
    /// Fallbacks taken at deploy time, each logged.
    pub notes: Vec<String>,
}

#[derive(Debug)]
enum SessionError {
    /// The device runs no models (a plugin).
    Unsupported(String),
    Other(String),
}

impl std::fmt::Display for SessionError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SessionError::Unsupported(m) | SessionError::Other(m) => f.write_str(m),
        }
    }
}

/// The control plane.
pub struct Control {
    /// DATA_DIR/lock, locked for as long as this control plane lives.
    _owner: std::fs::File,
    pub(crate) data_dir: PathBuf,
    engine: Arc<ScoringEngine>,
    devices: Devices,
    pub(crate) router: Arc<Router>,
    /// The store and the in-memory view of every endpoint. Admin operations
    /// are rare and must be serialized against each other (rule checks read
    /// all of an endpoint's versions); the scoring path never takes it.
    pub(crate) inner: Mutex<Inner>,
    /// Compiled components by module sha256, shared by every version that
    /// ships the same bytes.
    compiled: Mutex<HashMap<String, Compiled>>,
    /// Sessions by (model sha256, device), shared the same way.
    sessions: Mutex<HashMap<(String, String), Arc<dyn Model>>>,
    pub(crate) generation: AtomicU64,
    ready: AtomicBool,
    /// What replicas are counted against (monitor.rs).
    pub(crate) capacity: Mutex<Capacity>,
    /// The writer of collected model data (DATA_DIR/collected), shared by
    /// every version that collects.
    pub(crate) collector: Arc<Collector>,
}

pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding one of the control plane's locks leaves plain
    // data behind, never a half-made invariant that later readers trust.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Endpoint, version and model names (wasmscore-rules' rule).
pub(crate) fn valid_name(kind: &str, s: &str) -> Result<(), ControlError> {
    Ok(wasmscore_rules::valid_name(kind, s)?)
}

/// What a control plane keeps of its store across restarts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kept {
    /// Its versions, keys and counters (`up`).
    Store,
    /// Nothing: a node's store is scratch, the artifact is the truth.
    Nothing,
}

impl Control {
    pub fn open(data_dir: &Path, engine: Arc<ScoringEngine>, devices: Devices, router: Arc<Router>) -> Result<Self, ControlError> {
        Self::open_collecting(
            data_dir,
            engine,
            devices,
            router,
            &data_dir.join("collected"),
            CollectSettings::default(),
            Kept::Store,
        )
    }

    /// `open`, with collected model data written under `collected` with
    /// these settings; a `Kept::Nothing` store starts empty.
    pub fn open_collecting(
        data_dir: &Path,
        engine: Arc<ScoringEngine>,
        devices: Devices,
        router: Arc<Router>,
        collected: &Path,
        collect: CollectSettings,
        kept: Kept,
    ) -> Result<Self, ControlError> {
        std::fs::create_dir_all(data_dir.join("blobs")).map_err(|e| ControlError::Store(format!("{}: {e}", data_dir.display())))?;
        let owner = own(data_dir)?;
        if kept == Kept::Nothing {
            // Only once the directory is this process's: another's store
            // is not touched.
            for f in ["state.db", "state.db-wal", "state.db-shm"] {
                let _ = std::fs::remove_file(data_dir.join(f));
            }
        }
        let store = Store::open(&data_dir.join("state.db"))?;
        // The directory is this process's alone now: no upload is under way.
        sweep_blob_temps(&data_dir.join("blobs"));
        let collector =
            Collector::start(collected.to_path_buf(), collect).map_err(|e| ControlError::Store(format!("{}: {e}", collected.display())))?;
        Ok(Control {
            _owner: owner,
            collector,
            data_dir: data_dir.to_path_buf(),
            engine,
            devices,
            router,
            inner: Mutex::new(Inner::new(store)),
            compiled: Mutex::new(HashMap::new()),
            sessions: Mutex::new(HashMap::new()),
            generation: AtomicU64::new(0),
            ready: AtomicBool::new(false),
            capacity: Mutex::new(Capacity::of_machine()),
        })
    }

    pub fn router(&self) -> &Arc<Router> {
        &self.router
    }

    /// Called once the server stopped taking requests (SIGTERM): collected
    /// records still queued are written and their files closed, and the
    /// versions' counters saved.
    pub fn shutdown(&self) {
        self.collector.shutdown();
        self.save_counters();
    }

    /// Closes the collected-data files that are open, so they can be read.
    pub fn flush_collected(&self) {
        self.collector.flush();
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

    /// Stores bytes by content; returns their sha256. Synced before it returns.
    pub fn put_blob(&self, bytes: &[u8]) -> Result<String, ControlError> {
        let sha = sha256_hex(bytes);
        let path = self.blob_path(&sha)?;
        if !path.is_file() {
            // Each upload writes its own file: two of the same bytes at once
            // must not truncate each other's before the rename.
            static UPLOADS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
            let n = UPLOADS.fetch_add(1, Ordering::Relaxed);
            let tmp = path.with_extension(format!("tmp{}.{n}", std::process::id()));
            let io = |e: std::io::Error| ControlError::Store(format!("writing blob {sha}: {e}"));
            let written = (|| {
                let mut f = std::fs::File::create_new(&tmp)?;
                std::io::Write::write_all(&mut f, bytes)?;
                f.sync_all()?;
                std::fs::rename(&tmp, &path)?;
                // The rename itself survives a power loss once the
                // directory is synced.
                std::fs::File::open(path.parent().expect("a blob is in blobs/"))?.sync_all()
            })();
            if written.is_err() {
                let _ = std::fs::remove_file(&tmp);
            }
            written.map_err(io)?;
        }
        Ok(sha)
    }

    pub(crate) fn blob_size(&self, sha: &str, what: &str) -> Result<u64, ControlError> {
        std::fs::metadata(self.blob_path(sha)?)
            .map(|m| m.len())
            .map_err(|_| ControlError::BadRequest(format!("{what}: blob {sha} was not uploaded")))
    }

    fn read_blob(&self, sha: &str, what: &str) -> Result<Vec<u8>, ControlError> {
        std::fs::read(self.blob_path(sha)?).map_err(|e| ControlError::BadRequest(format!("{what}: blob {sha} was not uploaded ({e})")))
    }

    fn session(&self, model: &ModelRef, device: &str) -> Result<Arc<dyn Model>, SessionError> {
        let key = (model.sha256.clone(), device.to_string());
        if let Some(s) = lock(&self.sessions).get(&key) {
            return Ok(s.clone());
        }
        let bytes = self
            .read_blob(&model.sha256, &format!("model file {}", model.file))
            .map_err(|e| SessionError::Other(e.to_string()))?;
        let dev = self.devices.get(device).map_err(|e| SessionError::Other(e.to_string()))?;
        let session = dev.load_model(&model.file, &bytes).map_err(|e| match e {
            wasmscore_tensor::TensorError::Unsupported(m) => SessionError::Unsupported(m),
            e => SessionError::Other(format!("model file {} is not a usable ONNX model: {e}", model.file)),
        })?;
        lock(&self.sessions).insert(key, session.clone());
        Ok(session)
    }

    fn compile(&self, sha: &str, module_name: &str) -> Result<(Compiled, &'static str, u64), String> {
        if let Some(c) = lock(&self.compiled).get(sha) {
            return Ok((c.clone(), "shared", 0));
        }
        let bytes = self.read_blob(sha, &format!("module {module_name}")).map_err(|e| e.to_string())?;
        let (pre, load) = self.engine.load(&bytes).map_err(|e| format!("module {module_name}: {e}"))?;
        lock(&self.compiled).insert(sha.to_string(), pre.clone());
        let how = if load.from_cache { "disk cache" } else { "compiled" };
        Ok((pre, how, load.elapsed.as_millis() as u64))
    }

    /// Drops compiled components and sessions that no version uses any more.
    pub(crate) fn collect_unused(&self, used_modules: &[String], used_models: &[String]) {
        lock(&self.compiled).retain(|sha, _| used_modules.contains(sha));
        lock(&self.sessions).retain(|(sha, _), _| used_models.contains(sha));
    }

    /// Checks what can be checked before a version is acknowledged: its
    /// config resolves, its blobs were uploaded, its model names are sane.
    pub(crate) fn validate(&self, spec: &VersionSpec) -> Result<(), ControlError> {
        let resolved = DeploymentConfig::parse(&spec.config)?.resolve()?;
        // A device this host has not is refused before the version is
        // acknowledged (a restart without it fails the build instead).
        self.place(&resolved).map_err(ControlError::DeployFailed)?;
        let module_name = display_name(spec);
        self.blob_size(&spec.module, &format!("module {module_name}"))?;
        if spec.models.len() > MAX_MODELS {
            return Err(ControlError::BadRequest(format!(
                "a version holds at most {MAX_MODELS} models, got {}",
                spec.models.len()
            )));
        }
        let mut seen = std::collections::HashSet::new();
        for m in &spec.models {
            valid_name("model file", &m.file)?;
            if !seen.insert(&m.file) {
                return Err(ControlError::BadRequest(format!(
                    "two models are named {:?}; a module loads them by file name",
                    m.file
                )));
            }
            self.blob_size(&m.sha256, &format!("model file {}", m.file))?;
        }
        Ok(())
    }

    /// Builds a version: compile (or share), sessions, replicas with init().
    /// Blocking. `phase` is told each step as it starts.
    pub(crate) fn build(&self, endpoint: &str, version: &str, spec: &VersionSpec, phase: &dyn Fn(String)) -> Result<Built, BuildFailure> {
        let started = Instant::now();
        let fail = |message: String| BuildFailure { message, ctx: None };
        let resolved = DeploymentConfig::parse(&spec.config)
            .and_then(|c| c.resolve())
            .map_err(|e| fail(e.to_string()))?;
        let module_name = display_name(spec);
        phase(format!("loading module {module_name}"));
        let (pre, component, load_ms) = self.compile(&spec.module, &module_name).map_err(fail)?;
        let placed = self.place(&resolved).map_err(fail)?;
        let mut notes = placed.notes.clone();
        let mut model_device = placed.device.clone();
        let mut models = HashMap::new();
        // Each model's device: those loaded before one fell back stay on the
        // version's.
        let mut devices: HashMap<String, String> = HashMap::new();
        if !spec.models.is_empty() {
            phase(format!("loading {} model(s) on {}", spec.models.len(), placed.device));
        }
        for m in &spec.models {
            let session = match self.session(m, &model_device) {
                Err(SessionError::Unsupported(why)) if resolved.fallback.is_some() => {
                    let fb = resolved.fallback.clone().unwrap_or_default();
                    notes.push(format!("model {} runs on {fb} (device_fallback): {why}", m.file));
                    model_device = fb;
                    self.session(m, &model_device)
                }
                Err(SessionError::Unsupported(why)) => Err(SessionError::Other(format!(
                    "{why}; run the model through the ops import, or set device_fallback: \"cpu\" to run models on the CPU (logged and counted)"
                ))),
                other => other,
            };
            models.insert(m.file.clone(), session.map_err(|e| fail(e.to_string()))?);
            devices.insert(m.file.clone(), model_device.clone());
        }
        let signature = models
            .get("model.onnx")
            .or_else(|| (models.len() == 1).then(|| models.values().next()).flatten())
            .map(|m| (m.inputs().to_vec(), m.outputs().to_vec()));
        let batching = match resolved.batching {
            Some(b) => {
                phase(format!("probing {} model(s) for batching", models.len()));
                batch_models(&mut models, &devices, b)
            }
            None => Vec::new(),
        };
        // Models that loaded before one fell back stay where they are; they
        // are sessions on the version's device.
        // `load-on` reads the version's model files from the blobs.
        let blobs: HashMap<String, PathBuf> = spec
            .models
            .iter()
            .filter_map(|m| self.blob_path(&m.sha256).ok().map(|p| (m.file.clone(), p)))
            .collect();
        let source: ModelSource = Arc::new(move |file: &str| {
            let path = blobs
                .get(file)
                .ok_or_else(|| format!("no model file {file:?} ships with this version"))?;
            std::fs::read(path).map_err(|e| format!("reading model file {file}: {e}"))
        });
        let ctx = VersionContext::new(
            endpoint,
            version,
            models,
            self.devices.clone(),
            &placed.device,
            resolved.memory_limit,
        )
        .with_devices(&model_device, resolved.fallback.as_deref())
        .with_model_source(source)
        .with_sandbox(wasmscore_engine::Sandbox {
            env: resolved.sandbox.env.clone(),
            precise_clocks: resolved.sandbox.precise_clocks,
        })
        .decoupled(resolved.decoupled);
        let ctx = Arc::new(match resolved.collect {
            Some(rate) => ctx.with_collector(self.collector.for_version(endpoint, version, rate)),
            None => ctx,
        });
        for note in &notes {
            ctx.log("warn", note.clone());
        }
        for (file, state) in &batching {
            match state {
                Ok(_) => ctx.log("info", format!("model {file} is batched: its rows are independent")),
                Err(why) => ctx.log("warn", format!("model {file} is not batched: {why}")),
            }
        }
        let prepared = Prepared::new(pre, ctx.clone(), resolved.timeout, INIT_TIMEOUT);
        phase(format!(
            "starting {} replica(s) x {} instance(s): init()",
            resolved.pool.replicas, resolved.pool.max_concurrent
        ));
        let cpu = match resolved.cpu_limit {
            Some(cores) => Some(Arc::new(
                CpuGroup::new(&format!("{endpoint}/{version}"), cores, resolved.pool.max_concurrent).map_err(|why| BuildFailure {
                    message: format!("{endpoint}/{version}: cpu_cores_limit {cores}: the CPU cannot be limited here: {why}"),
                    ctx: Some(ctx.clone()),
                })?,
            )),
            None => None,
        };
        let pool_config = PoolConfig {
            replicas: resolved.pool.replicas,
            max_concurrent: resolved.pool.max_concurrent,
            max_wait: resolved.pool.max_wait,
            cpu,
            ..PoolConfig::default()
        };
        let pool = Arc::new(Pool::start(prepared, pool_config).map_err(|e| BuildFailure {
            message: format!("{endpoint}/{version}: {e}"),
            ctx: Some(ctx.clone()),
        })?);
        Ok(Built {
            version: Arc::new(Version::local(version, pool.clone())),
            pool,
            spec: spec.clone(),
            component,
            load_ms,
            deploy_ms: started.elapsed().as_millis() as u64,
            monitor: VersionMonitor::new(resolved, Instant::now()),
            placement: Placement {
                asked: placed.asked,
                device: placed.device,
                model_device,
                notes,
            },
            series: Default::default(),
            batching,
            signature,
        })
    }

    /// Where a version's work runs: the device it asked for, or its
    /// fallback (with a note) when this host does not have that device.
    pub(crate) fn place(&self, resolved: &Resolved) -> Result<Placement, String> {
        let asked = resolved.device.clone();
        match (self.devices.get(&asked), &resolved.fallback) {
            (Ok(_), _) => Ok(Placement {
                model_device: asked.clone(),
                device: asked.clone(),
                asked,
                notes: Vec::new(),
            }),
            (Err(e), Some(fb)) => {
                let note = format!("{e}; running on {fb} instead (device_fallback)");
                tracing::warn!("{note}");
                Ok(Placement {
                    model_device: fb.clone(),
                    device: fb.clone(),
                    asked,
                    notes: vec![note],
                })
            }
            (Err(e), None) => Err(format!(
                "{e}. Nothing falls back on its own: set device_fallback: \"cpu\" to run this version on the CPU instead (logged and counted)"
            )),
        }
    }

    /// The devices this host has and the ones it has not, with why.
    pub fn devices_json(&self) -> serde_json::Value {
        let have: Vec<serde_json::Value> = self
            .devices
            .all()
            .map(|d| serde_json::json!({"name": d.name(), "kind": d.kind().as_str(), "description": d.description()}))
            .collect();
        let missing: Vec<serde_json::Value> = self
            .devices
            .unavailable()
            .iter()
            .map(|(n, why)| serde_json::json!({"name": n, "why": why}))
            .collect();
        serde_json::json!({"devices": have, "unavailable": missing})
    }

    pub(crate) fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }
}

pub(crate) fn display_name(spec: &VersionSpec) -> String {
    if spec.module_name.is_empty() {
        spec.module.clone()
    } else {
        spec.module_name.clone()
    }
}

/// Wraps each model that passes the batching probe (on the CPU) in a
/// batcher shared by the version's replicas; says why for the others.
fn batch_models(
    models: &mut HashMap<String, Arc<dyn Model>>,
    devices: &HashMap<String, String>,
    cfg: crate::config::BatchingConfig,
) -> Vec<(String, Result<Arc<BatchStats>, String>)> {
    let settings = BatchSettings {
        max_batch_size: cfg.max_batch_size,
        max_queue_delay: std::time::Duration::from_micros(cfg.max_queue_delay_us),
    };
    let mut files: Vec<String> = models.keys().cloned().collect();
    files.sort();
    files
        .into_iter()
        .map(|file| {
            let model = models[&file].clone();
            let device = devices.get(&file).map_or("cpu", String::as_str);
            let state = if device != "cpu" {
                Err(format!("batching merges runs on the cpu device; this model runs on {device}"))
            } else {
                wasmscore_tensor::batch::probe(&*model).map(|()| {
                    let lanes = std::thread::available_parallelism().map_or(1, |n| n.get());
                    let batched = Arc::new(Batched::new(model, settings, lanes));
                    let stats = batched.stats().clone();
                    models.insert(file.clone(), batched);
                    stats
                })
            };
            (file, state)
        })
        .collect()
}

/// Takes DATA_DIR for this process: an exclusive lock on DATA_DIR/lock,
/// held while the returned file is open (the kernel lets go of it when the
/// process ends, however it ends). A second process on the same
/// directory would write the same store and blobs: it is refused.
fn own(data_dir: &Path) -> Result<std::fs::File, ControlError> {
    use std::os::fd::AsRawFd;
    let path = data_dir.join("lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| ControlError::Store(format!("{}: {e}", path.display())))?;
    // SAFETY: flock on a descriptor this function owns.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let e = std::io::Error::last_os_error();
        return Err(ControlError::Store(match e.raw_os_error() {
            Some(libc::EWOULDBLOCK) => format!(
                "{} is in use by another wasmscore process (stop it, or give this one another --data-dir)",
                data_dir.display()
            ),
            _ => format!("locking {}: {e}", path.display()),
        }));
    }
    Ok(file)
}

/// Removes the temp files of uploads that a crash or a power loss cut
/// short (`put_blob` names them `SHA.tmpPID.N`); a blob's own file has no
/// extension. Returns how many went.
fn sweep_blob_temps(blobs: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(blobs) else {
        return 0;
    };
    let mut swept = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some((sha, ext)) = name.to_str().and_then(|n| n.split_once('.')) else {
            continue;
        };
        if sha.len() == 64 && ext.starts_with("tmp") && std::fs::remove_file(entry.path()).is_ok() {
            swept += 1;
        }
    }
    if swept > 0 {
        tracing::info!(swept, dir = %blobs.display(), "removed the temp files of uploads cut short");
    }
    swept
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_data_dir_is_owned_by_one_process_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let first = super::own(dir.path()).unwrap();
        let e = super::own(dir.path()).unwrap_err().to_string();
        assert!(e.contains("in use by another wasmscore process"), "{e}");
        drop(first);
        super::own(dir.path()).unwrap();
    }

    #[test]
    fn only_the_temp_files_of_uploads_are_swept() {
        let dir = tempfile::tempdir().unwrap();
        let sha = "ab".repeat(32);
        for name in [
            format!("{sha}.tmp123.0"),
            format!("{sha}.tmp9.17"),
            sha.clone(),
            "notes.tmp1.0".into(),
        ] {
            std::fs::write(dir.path().join(name), b"x").unwrap();
        }
        assert_eq!(super::sweep_blob_temps(dir.path()), 2);
        let mut left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, vec![sha, "notes.tmp1.0".to_string()]);
    }
}
